"""One attention kernel for every row: flash attention whose numbers do not depend on the batch.

llama.cpp's CPU flash attention picks its kernel by the shape of each step: a tiled one for a
stream with 64 or more query rows (a prompt chunk), a split-KV one for a single row against 512 or
more cached tokens of a lone stream, a row-at-a-time one otherwise. They sum in different orders,
so a row's logits depend on how its prompt was cut into steps and on what else ran: a prefix
reused from an earlier request gives other numbers than the same prompt computed cold.

The CPU backend has a reference mode (`ggml_backend_cpu_set_use_ref`) that computes every row
with the row-at-a-time kernel, skipping masked cells, in cell order: a row's result then depends
only on its own query and its own sequence's KV. Decoding is as fast as with the shape-chosen
kernels (the row-at-a-time kernel is what a decode step of a few tokens uses anyway); long
prompts prefill slower (benchmarks/llama_server.py measures both).

llama.cpp's C API has no handle to a context's backends, so this reaches them through the
scheduler (`llama_context::get_sched`, a C++ method the library exports) and sets the mode
through the CPU backend's registry, which is how llama.cpp itself finds backend-specific calls.
"""

from __future__ import annotations

import ctypes

import llama_cpp

from openvertex.backends.local.llama_lib import Unavailable, bind, ggml, llama

_SET_USE_REF = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_bool)


def use_reference_kernels(context: llama_cpp.llama_context_p) -> None:
    """Every CPU backend of `context` computes attention with one kernel for every row, from its
    next step on. Raises `Unavailable` where this llama.cpp build offers no way to, or where the
    context has no CPU backend."""
    get_sched = bind(llama, "_ZNK13llama_context9get_schedEv", ctypes.c_void_p, ctypes.c_void_p)
    n_backends = bind(ggml, "ggml_backend_sched_get_n_backends", ctypes.c_int, ctypes.c_void_p)
    backend_at = bind(ggml, "ggml_backend_sched_get_backend", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    device_of = bind(ggml, "ggml_backend_get_device", ctypes.c_void_p, ctypes.c_void_p)
    registry_of = bind(ggml, "ggml_backend_dev_backend_reg", ctypes.c_void_p, ctypes.c_void_p)
    proc_address = bind(ggml, "ggml_backend_reg_get_proc_address", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)
    sched = get_sched(ctypes.cast(context, ctypes.c_void_p))
    cpu_backends = 0
    for index in range(n_backends(sched)):
        backend = backend_at(sched, index)
        address = proc_address(registry_of(device_of(backend)), b"ggml_backend_cpu_set_use_ref")
        if address:  # only the CPU backend's registry knows the call
            _SET_USE_REF(address)(backend, True)
            cpu_backends += 1
    if not cpu_backends:
        raise Unavailable("the context has no CPU backend that offers reference kernels")
