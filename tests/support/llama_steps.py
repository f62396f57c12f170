"""llama.cpp driven directly, step by step, for the tests of its kernels: a model loaded for a
fixture's scope, and the logits after a prompt computed in steps of given sizes."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np

from openvertex.backends.local.kernels import use_reference_kernels

PROMPT = [100 + (i * 37) % 4000 for i in range(150)]  # past a 64-row tile and a 64-cell KV tile
OTHER = [200 + (i * 53) % 4000 for i in range(150)]


def loaded_model(path: Path, *, repack: bool = True) -> Iterator[llama_cpp.llama_model_p]:
    """The model at `path`, loaded for a fixture's scope; `repack`: with its weights repacked for
    the CPU where this build knows how (llama.cpp's default), or as they are."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = repack
    loaded = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert loaded
    yield loaded
    llama_cpp.llama_model_free(loaded)


def last_logits(
    model: llama_cpp.llama_model_p,
    reference: bool,
    steps: list[int],
    *,
    beside: bool = False,
    attention: bool = True,
    prompts: tuple[list[int], list[int]] = (PROMPT, OTHER),
) -> np.ndarray:
    """The logits after the first of `prompts`, computed in steps of the given sizes, in a fresh
    context (with a KV stream per sequence); `beside`: each step also carries as many tokens of the
    second."""
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
            for seq_id, tokens in enumerate(prompts[: 2 if beside else 1]):
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
        assert position == len(prompts[0])
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


def logits_of_every_cut(model: llama_cpp.llama_model_p, prompts: tuple[list[int], list[int]]) -> np.ndarray:
    """The logits after the first of `prompts` in one chunk, checked to be those of every other cut
    to the bit, alone and with the second prompt beside it in every step."""
    whole = last_logits(model, True, CUTS["one chunk"], prompts=prompts)
    for cut in ("a chunk, then rows one by one", "chunks of 64 rows and fewer", "a few rows at a time"):
        assert np.array_equal(last_logits(model, True, CUTS[cut], prompts=prompts), whole), cut
        assert np.array_equal(last_logits(model, True, CUTS[cut], beside=True, prompts=prompts), whole), cut
    return whole
