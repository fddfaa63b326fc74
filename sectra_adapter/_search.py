"""Finding a multipart delimiter in a received buffer at memory speed: the C library's `memmem`.

Every byte of a slide is searched once for the delimiter, and `bytes.find`
was the download's largest cost after hashing (bench/download.py, perf): for
a 1 MiB haystack CPython picks its two-way search, ~3 GiB/s here, and holds
the GIL throughout. glibc's `memmem` runs at ~6-7 GiB/s on the same buffers
and, called through ctypes, lets the writer and hasher threads run meanwhile.
Where the C library has no `memmem`, `bytes.find` is used; both answer the
same (tests/sectra_adapter/test_search.py checks one against the other).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

Haystack = bytes | bytearray

# Below this, the call's own cost outweighs the faster scan.
_NATIVE_FROM = 64 * 1024


def _load_memmem() -> Callable[..., int | None] | None:
    try:
        memmem = ctypes.CDLL(None).memmem  # the C library this process already runs on
    except (OSError, AttributeError):
        return None
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    return memmem


_MEMMEM = _load_memmem()


def find(data: Haystack, needle: bytes, start: int = 0) -> int:
    """The index of the first `needle` in `data` at or after `start`, else -1 (as `bytes.find`)."""
    size = len(data)
    if _MEMMEM is None or size - start < _NATIVE_FROM or not needle:
        return data.find(needle, start)
    base = _address(data)
    found = _MEMMEM(base + start, size - start, needle, len(needle))
    return -1 if found is None else found - base


def _address(data: Haystack) -> int:
    """Where `data`'s bytes start in memory: valid while `data` lives (and, a bytearray, keeps its size)."""
    if isinstance(data, bytearray):
        return ctypes.addressof(ctypes.c_char.from_buffer(data))
    pointer = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert pointer is not None
    return pointer
