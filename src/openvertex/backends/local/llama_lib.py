"""What the engine calls in llama.cpp beyond llama-cpp-python's bindings.

llama-cpp-python binds llama.cpp's C API. A few things the engine needs are not in it: the
CPU backend's reference mode (kernels.py) and the KV cache's memory (kv_pages.py). They are
reached here, through ggml's own C functions and one C++ method the library exports, in the
pinned llama.cpp; where a build lacks one, `bind` raises and the caller goes without.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import llama_cpp
import llama_cpp._ggml

if TYPE_CHECKING:
    from typing import TypeAlias

    _CType: TypeAlias = type[ctypes._SimpleCData[Any]]

llama = llama_cpp.llama_cpp._lib
ggml = llama_cpp._ggml.libggml


class Unavailable(RuntimeError):
    """This llama.cpp build does not offer what was asked for."""


def bind(lib: ctypes.CDLL, name: str, restype: _CType | None, *argtypes: _CType) -> Callable[..., Any]:
    try:
        function = lib[name]
    except (AttributeError, KeyError) as exc:
        raise Unavailable(f"this llama.cpp build does not export {name}") from exc
    function.restype = restype
    function.argtypes = argtypes
    return function
