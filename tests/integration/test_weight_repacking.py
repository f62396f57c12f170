"""Q4_1 weights repacked for the CPU (patches/llama.cpp-q4_1-repack.patch, kernels.py): the default
model's matrix products run 8 weight rows against 1 activation row (gemv) or 4 (gemm) at a time. A
tiny random model with Q4_1 matrices whose rows come in eights (tests/support/tiny_llama.py) takes
the repacked path where the build has it; SmolLM2, also Q4_1, is checked in
test_attention_kernels.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from openvertex.backends.local.kernels import repacks_q4_1
from openvertex.backends.local.model import resolve_model_path
from openvertex.backends.local.supervisor import load_model, model_params
from openvertex.settings import LocalBackendSettings
from tests.support.llama_steps import CUTS, last_logits, loaded_model, logits_of_every_cut
from tests.support.tiny_llama import VOCAB, write_tiny_llama

# 150 tokens: steps of 150 rows (37 gemms of 4, then 2 gemvs), of 3 (gemvs) and of 1, 9, 13, 64, 140.
PROMPTS = ([3 + (i * 41) % (VOCAB - 3) for i in range(150)], [3 + (i * 59) % (VOCAB - 3) for i in range(150)])


@pytest.fixture(scope="module")
def tiny_q4_1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # rows of 128 or 256 weights (4 or 8 blocks), matrices of 64 to 256 rows
    path = Path(tmp_path_factory.mktemp("tiny")) / "tiny-q4_1.gguf"
    return write_tiny_llama(path, head_dim=32, heads=4, kv_heads=2, weights="q4_1")


@pytest.fixture(scope="module")
def repacked(tiny_q4_1: Path) -> Iterator[llama_cpp.llama_model_p]:
    yield from loaded_model(tiny_q4_1)


@pytest.fixture(scope="module")
def as_they_are(tiny_q4_1: Path) -> Iterator[llama_cpp.llama_model_p]:
    yield from loaded_model(tiny_q4_1, repack=False)


def test_with_repacked_weights_a_position_gets_the_same_logits_however_many_rows_share_its_steps(
    repacked: llama_cpp.llama_model_p,
) -> None:
    """A row goes through gemm in a step of four rows or more and through gemv past the last
    multiple of four: the same numbers to the bit either way, alone or beside another sequence."""
    logits_of_every_cut(repacked, PROMPTS)


def test_repacked_weights_compute_what_the_weights_as_they_are_do(
    repacked: llama_cpp.llama_model_p, as_they_are: llama_cpp.llama_model_p
) -> None:
    """The same products summed in another order: equal to float rounding, on a model small
    enough that rounding stays rounding (SmolLM2's 30 layers amplify it to up to a logit)."""
    for cut in ("one chunk", "a few rows at a time"):
        ours = last_logits(repacked, True, CUTS[cut], beside=True, prompts=PROMPTS)
        theirs = last_logits(as_they_are, True, CUTS[cut], prompts=PROMPTS)
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
        assert np.argmax(ours) == np.argmax(theirs)


def test_the_installed_llama_cpp_repacks_q4_1_weights(
    repacked: llama_cpp.llama_model_p, as_they_are: llama_cpp.llama_model_p
) -> None:
    """install.sh builds llama.cpp with patches/llama.cpp-q4_1-repack.patch; a llama-cpp-python
    installed otherwise computes Q4_1 products a row at a time (as exact, slower)."""
    if not repacks_q4_1() and not os.environ.get("OPENVERTEX_REQUIRE_PATCHED_LLAMA_CPP"):
        pytest.skip("llama-cpp-python was not built with patches/llama.cpp-q4_1-repack.patch")
    assert repacks_q4_1()
    # The repacked products are the ones computed: they sum in another order than the plain path.
    one_chunk = CUTS["one chunk"]
    assert not np.array_equal(
        last_logits(repacked, True, one_chunk, prompts=PROMPTS),
        last_logits(as_they_are, True, one_chunk, prompts=PROMPTS),
    )


def test_the_local_model_is_read_not_mapped_where_its_weights_are_repacked(tiny_q4_1: Path) -> None:
    """Repacked weights live in memory of their own: the model file, mapped as well, would stay
    resident beside them. A build that repacks reads a Q4_1 file; one that does not maps it, and a
    model with no Q4_1 weights is mapped either way. (Other tests may hold SmolLM2's file mapped:
    what counts is whether loading it adds a mapping.)"""
    path = resolve_model_path("smollm2")
    before = mappings_of(path)
    loaded = load_model(LocalBackendSettings(), path, None)
    try:
        assert (mappings_of(path) > before) is not repacks_q4_1()
    finally:
        loaded.model.close()
    mapped = llama_cpp.llama_model_default_params().load_mode
    f32 = write_tiny_llama(tiny_q4_1.with_name("tiny-f32.gguf"), head_dim=32, heads=4, kv_heads=2)
    assert model_params(LocalBackendSettings(), f32).load_mode == mapped
    assert model_params(LocalBackendSettings(), tiny_q4_1).load_mode == (
        llama_cpp.LLAMA_LOAD_MODE_NONE if repacks_q4_1() else mapped
    )


def mappings_of(path: Path) -> int:
    return Path("/proc/self/maps").read_text().count(str(path.resolve()))
