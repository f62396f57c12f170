"""The KV cache's memory, paid for as it is used.

llama.cpp reserves a context's whole KV cache when it loads (n_ctx cells in each slot's stream)
and zeroes it, so every page is resident from the start: 720 MiB for SmolLM2's 8 slots of 4,096
tokens, most of which no request ever reaches. The memory is anonymous, so a page given back to
the kernel (madvise MADV_DONTNEED) reads as zeros again, exactly as llama.cpp left it, and costs
nothing until a cell on it is written; the same idea as vAttention's KV cache in virtual memory
that is backed on demand. At load every page goes back; afterwards the engine gives back the
cells a slot no longer holds (`release`). A slot's sequence fills its stream from cell 0 in
position order (llama.cpp allocates from the lowest free cell, and the engine only ever drops a
sequence's tail), so the cells past a slot's context are exactly the free ones.

Where the cache is: llama.cpp's C API does not say, so `locate` writes one token's KV into
sequence 0 (and sequence 1, to see the stream stride), then looks through the process's
anonymous memory for that pattern alone: one row per layer's K and V at the tensor strides the
model's shapes give, and every other byte of the cache's span zero. Anything else (a GPU build,
flash attention off, whose V is stored transposed, a model whose layers differ) finds no such
place, and the cache then stays as llama.cpp made it. Linux only.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import llama_cpp
import numpy as np

from openvertex.backends.local.llama_lib import Unavailable, bind, ggml

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_ALIGNMENT = 32  # ggml's tensor alignment in a CPU buffer
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


@dataclass(frozen=True)
class KvShape:
    """The KV cache's tensors as llama.cpp lays them out in one buffer: for each layer K, then V,
    each [row bytes per cell] x [cells per stream] x [streams], padded to ggml's alignment."""

    layers: int
    k_row: int
    v_row: int
    cells: int
    streams: int

    def tensors(self) -> Iterator[tuple[int, int]]:
        """(offset from the buffer's start, row bytes) of each tensor, in buffer order."""
        offset = 0
        for _ in range(self.layers):
            for row in (self.k_row, self.v_row):
                yield offset, row
                offset += _aligned(row * self.cells * self.streams)

    @property
    def size(self) -> int:
        return sum(_aligned(row * self.cells * self.streams) for row in (self.k_row, self.v_row)) * self.layers


def kv_shape(
    model: llama_cpp.llama_model_p, context: llama_cpp.llama_context_p, kv_type: int, unified: bool
) -> KvShape:
    """What the model's hyperparameters say the KV cache of `context` looks like."""
    row_size = bind(ggml, "ggml_row_size", ctypes.c_size_t, ctypes.c_int, ctypes.c_int64)
    heads = llama_cpp.llama_model_n_head(model)
    head = llama_cpp.llama_model_n_embd(model) // heads
    arch = _metadata(model, "general.architecture")
    k_head = int(_metadata(model, f"{arch}.attention.key_length") or head)
    v_head = int(_metadata(model, f"{arch}.attention.value_length") or head)
    kv_heads = llama_cpp.llama_model_n_head_kv(model)
    streams = 1 if unified else llama_cpp.llama_n_seq_max(context)
    cells = llama_cpp.llama_n_ctx(context) if unified else llama_cpp.llama_n_ctx_seq(context)
    return KvShape(
        layers=llama_cpp.llama_model_n_layer(model),
        k_row=int(row_size(kv_type, k_head * kv_heads)),
        v_row=int(row_size(kv_type, v_head * kv_heads)),
        cells=cells,
        streams=streams,
    )


class KvPages:
    """The located KV cache: gives back the pages of cells that hold nothing."""

    def __init__(self, base: int, shape: KvShape) -> None:
        self.base = base
        self.shape = shape

    @classmethod
    def find(cls, shape: KvShape, marked_streams: int) -> KvPages | None:
        """The one place in this process's anonymous memory that holds a KV cache of `shape`
        whose cell 0 is written in the first `marked_streams` streams and nothing else; None where
        there is no such place, or more than one."""
        if not sys.platform.startswith("linux"):
            return None
        descriptor = os.open("/proc/self/mem", os.O_RDONLY)
        try:
            memory = _Memory(descriptor)
            found = [
                base
                for start, end in _anonymous_mappings(shape.size)
                for base in _marked(memory, start, end, shape, marked_streams)
                if _own_mapping(memory, base, shape.size)
            ]
        finally:
            os.close(descriptor)
        if len(found) != 1:
            log.warning("no single place in memory holds the KV cache's mark (%d candidates)", len(found))
            return None
        return cls(found[0], shape)

    def release(self, stream: int, first_cell: int = 0) -> None:
        """Give back the pages of cells `first_cell` onward of `stream`, in every layer: they
        read as zeros (as llama.cpp left them at load) and cost no memory until written. Only
        whole pages inside those cells' bytes go back; the caller guarantees the cells are free."""
        cells = self.shape.cells
        for offset, row in self.shape.tensors():
            start = self.base + offset + (stream * cells + first_cell) * row
            end = self.base + offset + (stream + 1) * cells * row
            _dont_need(start, end)

    def release_all(self) -> None:
        _dont_need(self.base, self.base + self.shape.size)

    def resident_bytes(self) -> int:
        """Bytes of the cache in memory now: its pages present and this process's alone (a page
        only read since it was given back maps the kernel's shared zero page, which costs
        nothing). From /proc/self/pagemap, 2 MiB read for each GiB of KV; any thread may ask."""
        first = self.base // PAGE
        pages = -(-(self.base + self.shape.size) // PAGE) - first
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(first * 8)
            entries = np.frombuffer(pagemap.read(pages * 8), dtype=np.uint64)
        owned = (entries >> np.uint64(63)) & (entries >> np.uint64(56)) & np.uint64(1)  # present, exclusive
        return int(np.count_nonzero(owned)) * PAGE


def _aligned(size: int) -> int:
    return -(-size // _ALIGNMENT) * _ALIGNMENT


def _metadata(model: llama_cpp.llama_model_p, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(128)
    length = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode() if length >= 0 else None


def _dont_need(start: int, end: int) -> None:
    first, last = -(-start // PAGE) * PAGE, end // PAGE * PAGE  # whole pages inside only
    if last > first and _libc.madvise(first, last - first, _MADV_DONTNEED) != 0:
        raise Unavailable(f"madvise failed: errno {ctypes.get_errno()}")


def _anonymous_mappings(at_least: int) -> Iterator[tuple[int, int]]:
    """Readable and writable private mappings without a file (or the brk heap), of `at_least` bytes."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            anonymous = len(fields) == 5 or (len(fields) == 6 and fields[5] == "[heap]")
            if anonymous and fields[1].startswith("rw") and fields[1].endswith("p"):
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if end - start >= at_least:
                    yield start, end


class _Memory:
    """This process's memory read through /proc/self/mem: copies, never pointers, so a range
    another thread unmaps meanwhile is an OSError here, not a crash."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor

    def read(self, address: int, size: int) -> np.ndarray[tuple[int], np.dtype[np.uint8]]:
        data = os.pread(self._descriptor, size, address)
        if len(data) != size:
            raise OSError(f"short read at {address:#x}")
        return np.frombuffer(data, dtype=np.uint8)

    def written_pages(self, start: int, end: int) -> np.ndarray[tuple[int], np.dtype[np.bool_]]:
        """Which pages of [start, end) hold a byte other than zero (read a chunk at a time)."""
        chunk = 16 << 20
        parts = [
            self.read(at, min(chunk, end - at)).view(np.uint64).reshape(-1, PAGE // 8).any(axis=1)
            for at in range(start, end, chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _marked(memory: _Memory, start: int, end: int, shape: KvShape, marked_streams: int) -> Iterator[int]:
    """Where in [start, end) the KV cache begins. The cache's first page holds its first row (and
    maybe the allocator's header before it), so a candidate is a written page from which every
    marked row's page (or the next one) is written: one vector test over all pages. For those
    few, the first V row follows the empty cells that end the first K tensor, so its first written
    byte, rounded down to ggml's alignment, is where V begins: the base is that less V's offset. A
    base is kept when every marked row begins with written bytes just where the shape puts it,
    with zeros before it, and no page wholly inside the cache's span is written but those the
    rows fall on."""
    try:
        written = memory.written_pages(start, end)
    except OSError:  # unmapped while read: not a cache that is still there
        return
    tensors = list(shape.tensors())
    rows = [(offset + stream * shape.cells * row, row) for offset, row in tensors for stream in range(marked_streams)]
    span_pages = -(-shape.size // PAGE)  # a base late in its page is checked against `end` below
    if len(written) < span_pages:
        return
    candidates = written[: len(written) - span_pages + 1].copy()
    padded = np.concatenate([written, np.zeros(1, dtype=bool)])
    for offset, _ in rows:
        shift = offset // PAGE
        candidates &= padded[shift : shift + len(candidates)] | padded[shift + 1 : shift + 1 + len(candidates)]
    v_offset = tensors[1][0]
    for page in np.flatnonzero(candidates):
        low = start + int(page) * PAGE
        try:
            first = np.flatnonzero(memory.read(low + v_offset, PAGE + _ALIGNMENT))
            if not len(first):
                continue
            base = low + int(first[0]) // _ALIGNMENT * _ALIGNMENT
            if base >= low + PAGE or base + shape.size > end:
                continue
            if not all(_row_begins_at(memory, base + offset, offset > 0) for offset, _ in rows):
                continue
        except OSError:
            continue
        first_inside = -(-(base - start) // PAGE)
        inside = written[first_inside : (base - start + shape.size) // PAGE].copy()
        for offset, row in rows:
            first_page, last_page = (base - start + offset) // PAGE, (base - start + offset + row - 1) // PAGE
            inside[max(first_page - first_inside, 0) : max(last_page - first_inside + 1, 0)] = False
        if not inside.any():
            yield base


_IS_MMAPPED = 0x2  # glibc's chunk header: the size word's bit for a chunk that is a mapping of its own


def _own_mapping(memory: _Memory, base: int, size: int) -> bool:
    """Whether the allocation at `base` is a mapping of its own (glibc's allocator maps large
    blocks whole; its header, just before the block, says so): no other allocation shares a page
    that is given back. A cache inside a heap among other allocations is left reserved whole."""
    try:
        header = int.from_bytes(memory.read(base - 8, 8).tobytes(), "little")
    except OSError:
        return False
    return bool(header & _IS_MMAPPED) and header & ~0x7 >= size


def _row_begins_at(memory: _Memory, at: int, zeros_before: bool) -> bool:
    """A written row begins at `at`: its first aligned block is written (one value at least) and,
    where the bytes before it are the cache's own, the block before it is not."""
    if not zeros_before:
        return bool(memory.read(at, _ALIGNMENT).any())
    around = memory.read(at - _ALIGNMENT, 2 * _ALIGNMENT)
    return bool(around[_ALIGNMENT:].any()) and not around[:_ALIGNMENT].any()
