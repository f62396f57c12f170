"""One attention kernel for every row: flash attention whose numbers do not depend on the batch.

llama.cpp's CPU flash attention picks its kernel by the shape of each step: a tiled one for a
stream with 64 or more query rows (a prompt chunk), a split-KV one for a single row against 512 or
more cached tokens of a lone stream, a row-at-a-time one otherwise. They sum in different orders,
so a row's logits depend on how its prompt was cut into steps and on what else ran: a prefix
reused from an earlier request gives other numbers than the same prompt computed cold.

The CPU backend has a reference mode (`ggml_backend_cpu_set_use_ref`) that computes every row with
one kernel: a row's result then depends only on its own query, its mask and its sequence's KV
cells where they are (with a KV stream per slot, cell i holds position i).

- In llama.cpp as released, that kernel is the row-at-a-time one. Decoding is as fast as with the
  shape-chosen kernels; long prompts prefill slower (about 1.5x on a 2,000-token prompt).
- install.sh builds llama.cpp with `patches/llama.cpp-attention.patch`, where the reference mode
  runs the tiled kernel for every row count instead (its numbers for a row do not depend on the
  tile's other rows); a decode step's tile (the heads that share a KV head) reads K and V in
  place, with the same arithmetic as a packed tile: prompts prefill, and decode steps decode, as
  fast as with the shape-chosen kernels.
  Such a build offers `ggml_backend_cpu_set_use_ref_fa_tiled` beside the setter. The tiled kernel
  takes an F16 or F32 KV; a quantised one goes row at a time in either build.

The weights' matrix products are the other half of a row's numbers. install.sh also applies
`patches/llama.cpp-q4_1-repack.patch`, with which Q4_1 weights (the default model's) are repacked
for the CPU, as llama.cpp repacks Q4_0: 8 weight rows against 1 to 4 activation rows at a time,
each output the same operations in the same order whatever the batch. Such a build answers
`ggml_backend_cpu_repacks_q4_1` (`repacks_q4_1`).

llama.cpp's C API has no handle to a context's backends, so this reaches them through the
scheduler (`llama_context::get_sched`, a C++ method the library exports) and sets the mode
through the CPU backend's registry, which is how llama.cpp itself finds backend-specific calls.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Literal

import llama_cpp

from openvertex.backends.local.llama_lib import Unavailable, bind, ggml, llama

_SET_USE_REF = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_bool)
_TILED = b"ggml_backend_cpu_set_use_ref_fa_tiled"  # only in a build with patches/llama.cpp-attention.patch
_REPACKS_Q4_1 = b"ggml_backend_cpu_repacks_q4_1"  # only in a build with patches/llama.cpp-q4_1-repack.patch
_ANSWER = ctypes.CFUNCTYPE(ctypes.c_bool)

Kernels = Literal["tiled", "reference"]


def _proc_address(registry: int | None, name: bytes) -> int | None:
    proc_address = bind(ggml, "ggml_backend_reg_get_proc_address", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
    address: int | None = proc_address(registry, name)
    return address


def row_kernels(kv_type: str) -> Kernels:
    """Which kernel this llama.cpp build's reference mode computes every attention row over a KV
    of `kv_type` with: "tiled" (built with patches/llama.cpp-attention.patch, an F16 KV) or
    "reference" (as released, or a quantised KV, which the tiled kernel does not take)."""
    return "tiled" if kv_type == "f16" and _patched() else "reference"


@cache
def repacks_q4_1() -> bool:
    """Whether this llama.cpp build repacks Q4_1 weights for the CPU (and computes their products
    in another order than the plain path: a KV computed with one is not the other's)."""
    address = _cpu_proc_address(_REPACKS_Q4_1)
    return bool(address and _ANSWER(address)())


@cache
def _patched() -> bool:
    return _cpu_proc_address(_TILED) is not None


def _cpu_proc_address(name: bytes) -> int | None:
    """`name` in the CPU backend's registry: None where this build does not know it."""
    try:
        registry_by_name = bind(ggml, "ggml_backend_reg_by_name", ctypes.c_void_p, ctypes.c_char_p)
        registry = registry_by_name(b"CPU")
        return _proc_address(registry, name) if registry else None
    except Unavailable:
        return None


def use_reference_kernels(context: llama_cpp.llama_context_p) -> None:
    """Every CPU backend of `context` computes attention with one kernel for every row
    (`row_kernels` says which), from its next step on. Raises `Unavailable` where this llama.cpp
    build offers no way to, or where the context has no CPU backend."""
    get_sched = bind(llama, "_ZNK13llama_context9get_schedEv", ctypes.c_void_p, ctypes.c_void_p)
    n_backends = bind(ggml, "ggml_backend_sched_get_n_backends", ctypes.c_int, ctypes.c_void_p)
    backend_at = bind(ggml, "ggml_backend_sched_get_backend", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    device_of = bind(ggml, "ggml_backend_get_device", ctypes.c_void_p, ctypes.c_void_p)
    registry_of = bind(ggml, "ggml_backend_dev_backend_reg", ctypes.c_void_p, ctypes.c_void_p)
    sched = get_sched(ctypes.cast(context, ctypes.c_void_p))
    cpu_backends = 0
    for index in range(n_backends(sched)):
        backend = backend_at(sched, index)
        address = _proc_address(registry_of(device_of(backend)), b"ggml_backend_cpu_set_use_ref")
        if address:  # only the CPU backend's registry knows the call
            _SET_USE_REF(address)(backend, True)
            cpu_backends += 1
    if not cpu_backends:
        raise Unavailable("the context has no CPU backend that offers reference kernels")
