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


@pytest.fixture(scope="module")
def model() -> Iterator[llama_cpp.llama_model_p]:
    llama_cpp.llama_backend_init()
    loaded = llama_cpp.llama_model_load_from_file(
        str(resolve_model_path("smollm2")).encode(), llama_cpp.llama_model_default_params()
    )
    assert loaded
    yield loaded
    llama_cpp.llama_model_free(loaded)


def last_logits(model: llama_cpp.llama_model_p, reference: bool, steps: list[int]) -> np.ndarray:
    """The logits after PROMPT, computed in steps of the given sizes, in a fresh context."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 512, 256, 256
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    context = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(256, 0, 1)
    try:
        if reference:
            use_reference_kernels(context)
        position = 0
        for size in steps:
            batch.n_tokens = size
            for i in range(size):
                batch.token[i] = PROMPT[position + i]
                batch.pos[i] = position + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == size - 1
            assert llama_cpp.llama_decode(context, batch) == 0
            position += size
        assert position == len(PROMPT)
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        logits = llama_cpp.llama_get_logits_ith(context, -1)
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


def test_with_the_shape_chosen_kernels_the_cut_shows_in_the_logits(model: llama_cpp.llama_model_p) -> None:
    """What the reference mode is for: llama.cpp's own choice (tiled for a chunk, row at a time for
    a single row) gives a prompt decoded one row at a time at its end other numbers."""
    whole = last_logits(model, False, CUTS["one chunk"])
    assert not np.array_equal(last_logits(model, False, CUTS["a chunk, then rows one by one"]), whole)


def test_the_installed_llama_cpp_runs_the_tiled_kernel_for_every_row() -> None:
    """install.sh builds llama.cpp with patches/llama.cpp-attention.patch; a llama-cpp-python
    installed otherwise runs the released row-at-a-time kernel (as exact, slower to prefill)."""
    if row_kernels() != "tiled" and not os.environ.get("OPENVERTEX_REQUIRE_TILED_ATTENTION"):
        pytest.skip("llama-cpp-python was not built with patches/llama.cpp-attention.patch")
    assert row_kernels() == "tiled"
