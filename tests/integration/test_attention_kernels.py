"""Flash attention with one kernel for every row (kernels.py), on the real model: a position's
logits do not depend on how its prompt was cut into steps. Tiny random models of other attention
shapes (tests/support/tiny_llama.py) reach the kernel's paths that SmolLM2's never takes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from openvertex.backends.local.kernels import row_kernels
from openvertex.backends.local.model import resolve_model_path
from tests.support.llama_steps import CUTS, last_logits, loaded_model, logits_of_every_cut
from tests.support.tiny_llama import VOCAB, write_tiny_llama


@pytest.fixture(scope="module")
def model() -> Iterator[llama_cpp.llama_model_p]:
    yield from loaded_model(resolve_model_path("smollm2"))


@pytest.mark.parametrize("cut", [name for name in CUTS if name != "one chunk"])
def test_with_one_kernel_for_every_row_a_position_gets_the_same_logits_however_its_prompt_was_cut(
    model: llama_cpp.llama_model_p, cut: str
) -> None:
    whole = last_logits(model, True, CUTS["one chunk"])
    assert np.array_equal(last_logits(model, True, CUTS[cut]), whole)


@pytest.mark.parametrize("cut", ["one chunk", "a chunk, then rows one by one", "a few rows at a time"])
def test_with_one_kernel_for_every_row_another_sequence_in_the_steps_changes_nothing(
    model: llama_cpp.llama_model_p, cut: str
) -> None:
    assert np.array_equal(last_logits(model, True, CUTS[cut], beside=True), last_logits(model, True, CUTS[cut]))


def test_one_kernel_for_every_row_computes_the_attention_the_others_do(model: llama_cpp.llama_model_p) -> None:
    """Exact repeats are worth nothing with wrong numbers. A 150-row prompt chunk goes through
    llama.cpp's own tiled kernel with the shape-chosen kernels too: the same logits to the bit,
    however the reference mode's prompt was cut. Against attention as plain matrix products (flash
    attention off) they agree to f16 rounding and put the same token first."""
    released = last_logits(model, False, CUTS["one chunk"])
    plain = last_logits(model, False, CUTS["one chunk"], attention=False)
    for cut in ("one chunk", "a few rows at a time"):
        ours = last_logits(model, True, CUTS[cut], beside=True)
        if row_kernels("f16") == "tiled":
            assert np.array_equal(ours, released)
        assert np.abs(ours - plain).max() < 0.05 * np.abs(plain).max()
        assert np.argmax(ours) == np.argmax(plain)


def test_with_the_shape_chosen_kernels_the_cut_shows_in_the_logits(model: llama_cpp.llama_model_p) -> None:
    """What the reference mode is for: llama.cpp's own choice (tiled for a chunk, row at a time for
    a single row) gives a prompt decoded one row at a time at its end other numbers."""
    whole = last_logits(model, False, CUTS["one chunk"])
    assert not np.array_equal(last_logits(model, False, CUTS["a chunk, then rows one by one"]), whole)


def test_the_installed_llama_cpp_runs_the_tiled_kernel_for_every_row() -> None:
    """install.sh builds llama.cpp with patches/llama.cpp-attention.patch; a llama-cpp-python
    installed otherwise runs the released row-at-a-time kernel (as exact, slower to prefill)."""
    if row_kernels("f16") != "tiled" and not os.environ.get("OPENVERTEX_REQUIRE_PATCHED_LLAMA_CPP"):
        pytest.skip("llama-cpp-python was not built with patches/llama.cpp-attention.patch")
    assert row_kernels("f16") == "tiled"


# Head size, query heads, KV heads: sizes that are no multiple of a vector (20: 8 + 8 + 4; 40:
# 16 + 16 + 8), and a decode step's tile of 6, 7 or 1 rows (the heads that share a KV head).
SHAPES = [(20, 6, 1), (24, 7, 1), (40, 4, 4)]
TINY_PROMPTS = ([3 + (i * 37) % (VOCAB - 3) for i in range(150)], [3 + (i * 53) % (VOCAB - 3) for i in range(150)])


@pytest.fixture(scope="module", params=SHAPES, ids=lambda shape: "head {}, {} heads over {}".format(*shape))
def tiny_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[llama_cpp.llama_model_p]:
    head_dim, heads, kv_heads = request.param
    path = write_tiny_llama(
        Path(tmp_path_factory.mktemp("tiny")) / "tiny.gguf", head_dim=head_dim, heads=heads, kv_heads=kv_heads
    )
    yield from loaded_model(path)


def test_other_attention_shapes_get_the_same_logits_however_the_prompt_was_cut(
    tiny_model: llama_cpp.llama_model_p,
) -> None:
    """A decode step's few rows take the kernel's in-place path, a prompt chunk's the packed one;
    the heads' sizes leave remainders in both. Every cut gives the chunk's numbers to the bit, and
    the same with another sequence in every step."""
    whole = logits_of_every_cut(tiny_model, TINY_PROMPTS)
    plain = last_logits(tiny_model, False, CUTS["one chunk"], attention=False, prompts=TINY_PROMPTS)
    assert np.abs(whole - plain).max() < 0.01 * np.abs(plain).max()
    # The model is one whose logits show a summation order: llama.cpp's own choice of kernel by
    # shape (which sums in other orders) moves them.
    shape_chosen = last_logits(tiny_model, False, CUTS["a chunk, then rows one by one"], prompts=TINY_PROMPTS)
    assert not np.array_equal(shape_chosen, last_logits(tiny_model, False, CUTS["one chunk"], prompts=TINY_PROMPTS))
