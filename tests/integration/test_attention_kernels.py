"""Flash attention with one kernel for every row (kernels.py), on the real model: a position's
logits do not depend on how its prompt was cut into steps."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

import llama_cpp
import numpy as np
import pytest

from openvertex.backends.local.kernels import row_kernels, use_reference_kernels
from openvertex.backends.local.model import resolve_model_path

PROMPT = [100 + (i * 37) % 4000 for i in range(150)]  # past a 64-row tile and a 64-cell KV tile
OTHER = [200 + (i * 53) % 4000 for i in range(150)]


@pytest.fixture(scope="module")
def model() -> Iterator[llama_cpp.llama_model_p]:
    llama_cpp.llama_backend_init()
    loaded = llama_cpp.llama_model_load_from_file(
        str(resolve_model_path("smollm2")).encode(), llama_cpp.llama_model_default_params()
    )
    assert loaded
    yield loaded
    llama_cpp.llama_model_free(loaded)


def last_logits(
    model: llama_cpp.llama_model_p, reference: bool, steps: list[int], *, beside: bool = False, attention: bool = True
) -> np.ndarray:
    """The logits after PROMPT, computed in steps of the given sizes, in a fresh context (with a KV
    stream per sequence); `beside`: each step also carries as many tokens of another sequence."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1024, 512, 512, 2
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if attention else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    context = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    try:
        if reference:
            use_reference_kernels(context)
        position = 0
        for size in steps:
            batch.n_tokens = 0
            for seq_id, tokens in ((0, PROMPT), (1, OTHER)) if beside else ((0, PROMPT),):
                for i in range(size):
                    n = batch.n_tokens
                    batch.token[n] = tokens[position + i]
                    batch.pos[n] = position + i
                    batch.n_seq_id[n] = 1
                    batch.seq_id[n][0] = seq_id
                    batch.logits[n] = seq_id == 0 and i == size - 1
                    batch.n_tokens = n + 1
            assert llama_cpp.llama_decode(context, batch) == 0
            position += size
        assert position == len(PROMPT)
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        logits = llama_cpp.llama_get_logits_ith(context, steps[-1] - 1)
        return np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).copy()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(context)


CUTS = {
    "one chunk": [150],
    "a chunk, then rows one by one": [140] + [1] * 10,
    "chunks of 64 rows and fewer": [64, 64, 13, 9],
    "a few rows at a time": [3] * 50,
}


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
    if row_kernels("f16") != "tiled" and not os.environ.get("OPENVERTEX_REQUIRE_TILED_ATTENTION"):
        pytest.skip("llama-cpp-python was not built with patches/llama.cpp-attention.patch")
    assert row_kernels("f16") == "tiled"
