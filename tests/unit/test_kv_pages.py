"""Finding a KV cache in this process's memory by its mark, and giving back its free cells' pages,
on a cache laid out as llama.cpp lays one out (an anonymous mapping, the allocator's header just
before the first tensor), without a model."""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from openvertex.backends.local.kv_pages import PAGE, KvPages, KvShape

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise")

# Rows that are not a whole number of pages, 2 streams of 64 cells: 128 KiB per tensor.
SHAPE = KvShape(layers=3, k_row=512, v_row=512 + 64, cells=64, streams=2)
HEADER = 64  # where the cache begins in its mapping (glibc puts a chunk header before it)


@pytest.fixture
def region() -> Iterator[np.ndarray[tuple[int], np.dtype[np.uint8]]]:
    """An anonymous mapping holding a zeroed cache of SHAPE, as llama.cpp leaves it at load."""
    memory = mmap.mmap(-1, HEADER + SHAPE.size + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = np.frombuffer(memory, dtype=np.uint8)
    _header(view)
    view[HEADER : HEADER + SHAPE.size] = 0  # written, as llama.cpp's clear writes it: every page resident
    yield view  # the mapping goes with the last view of it


def _header(view: np.ndarray[tuple[int], np.dtype[np.uint8]]) -> np.ndarray[tuple[int], np.dtype[np.uint8]]:
    """The allocator's bookkeeping before the cache, ending in glibc's chunk header: the size of a
    block that is a mapping of its own."""
    view[:HEADER] = 0xA5
    view[HEADER - 8 : HEADER] = np.frombuffer(((HEADER + SHAPE.size) | 0x2).to_bytes(8, "little"), np.uint8)
    return view


def test_a_cache_inside_a_heap_among_other_allocations_is_left_alone(
    region: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> None:
    region[HEADER - 8 : HEADER] = np.frombuffer(
        (HEADER + SHAPE.size).to_bytes(8, "little"), np.uint8
    )  # not mapped alone
    _mark(region, 2)
    assert KvPages.find(SHAPE, 2) is None


def _address(view: np.ndarray[tuple[int], np.dtype[np.uint8]]) -> int:
    return int(view.ctypes.data)


def _mark(view: np.ndarray[tuple[int], np.dtype[np.uint8]], streams: int, cell: int = 0) -> None:
    """Write one cell's K and V in every layer of the first `streams` streams."""
    for offset, row in SHAPE.tensors():
        for stream in range(streams):
            at = HEADER + offset + (stream * SHAPE.cells + cell) * row
            view[at : at + row] = np.arange(1, row + 1) % 251 + 1


def test_the_marked_cache_is_found_where_it_begins(region: np.ndarray[tuple[int], np.dtype[np.uint8]]) -> None:
    _mark(region, 2)
    pages = KvPages.find(SHAPE, 2)
    assert pages is not None
    assert pages.base == _address(region) + HEADER


def test_nothing_is_found_where_anything_else_is_written_in_the_span(
    region: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> None:
    _mark(region, 2)
    region[HEADER + SHAPE.size // 2 + 3] = 1  # a stray byte: this is not a cache of SHAPE with only the mark
    assert KvPages.find(SHAPE, 2) is None


def test_nothing_is_found_where_the_stream_stride_is_not_the_shapes(
    region: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> None:
    _mark(region, 1)
    _mark(region, 1, cell=1)  # the second mark one cell on, not one stream on
    assert KvPages.find(SHAPE, 2) is None


def test_two_places_that_match_are_not_told_apart(region: np.ndarray[tuple[int], np.dtype[np.uint8]]) -> None:
    other = np.frombuffer(
        mmap.mmap(-1, HEADER + SHAPE.size + PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), dtype=np.uint8
    )
    _header(other)
    _mark(region, 2)
    _mark(other, 2)
    assert KvPages.find(SHAPE, 2) is None


def test_free_cells_give_their_pages_back_and_read_as_zeros(
    region: np.ndarray[tuple[int], np.dtype[np.uint8]],
) -> None:
    _mark(region, 2)
    pages = KvPages.find(SHAPE, 2)
    assert pages is not None
    whole = pages.resident_bytes()
    assert whole >= SHAPE.size  # the clear made every page resident
    for cell in range(1, 40):  # stream 1 holds 40 cells now, stream 0 one
        _mark_stream(region, 1, cell)
    held = region.copy()
    pages.release(1, first_cell=24)  # stream 1 keeps cells 0 to 23
    for offset, row in SHAPE.tensors():
        kept_end = HEADER + offset + (SHAPE.cells + 24) * row
        stream_end = HEADER + offset + 2 * SHAPE.cells * row
        assert np.array_equal(region[HEADER + offset : kept_end], held[HEADER + offset : kept_end])
        assert not region[-(-kept_end // PAGE) * PAGE : stream_end // PAGE * PAGE].any()  # whole pages only
    assert pages.resident_bytes() < whole
    pages.release_all()
    assert pages.resident_bytes() <= 2 * PAGE  # the pages the cache shares with its header and what follows
    assert np.array_equal(region[:HEADER], _header(np.zeros(HEADER, dtype=np.uint8)))  # never the header
    assert not region[PAGE : (HEADER + SHAPE.size) // PAGE * PAGE].any()  # all but the shared pages


def _mark_stream(view: np.ndarray[tuple[int], np.dtype[np.uint8]], stream: int, cell: int) -> None:
    for offset, row in SHAPE.tensors():
        at = HEADER + offset + (stream * SHAPE.cells + cell) * row
        view[at : at + row] = 7


def test_no_place_holds_an_unmarked_cache() -> None:
    assert KvPages.find(KvShape(layers=7, k_row=96, v_row=96, cells=33, streams=3), 2) is None
