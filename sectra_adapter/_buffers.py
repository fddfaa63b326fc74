"""A fixed set of receive buffers that a download fills in turn, each lent out again only when free.

Receiving a slide into a new `bytes` per read costs more than the copy: every
1 MiB object is fresh memory for glibc (an `mmap`, 256 page faults zeroing it,
a `munmap`, or heap growth and trimming), which on a 1 GiB slide was a third of
the downloading process's CPU (bench/download.py). Reading into a few buffers
allocated once removes all of it. The price is bookkeeping: a buffer goes back
into use only when every thread still reading it (the file writer, the hasher)
has let go, so each hand-off takes a hold (`retain`) and gives it back
(`release`), and `take` waits while every buffer is held, which also bounds the
download's memory.
"""

from __future__ import annotations

import queue
import threading


class BufferPool:
    """`count` buffers of `size` bytes. `take` hands out a free one with one hold, its taker's."""

    def __init__(self, count: int, size: int) -> None:
        if count < 1 or size < 1:
            raise ValueError("a buffer pool needs at least one buffer of at least one byte")
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._holds: dict[int, int] = {}  # id(buffer) -> holds, for the buffers out of the pool
        self._ours: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        for _ in range(count):
            buffer = bytearray(size)
            self._ours[id(buffer)] = buffer
            self._free.put(buffer)

    def take(self) -> bytearray:
        """A free buffer, waiting for one if all are held; the caller releases it when done."""
        buffer = self._free.get()
        with self._lock:
            self._holds[id(buffer)] = 1
        return buffer

    def retain(self, data: memoryview) -> None:
        """One more hold on the buffer `data` views; data from anywhere else is ignored."""
        key = self._key(data)
        if key is None:
            return
        with self._lock:
            self._holds[key] += 1

    def release(self, data: memoryview | bytearray) -> None:
        """Give back one hold on the buffer `data` is or views; the last one frees the buffer."""
        key = self._key(data)
        if key is None:
            return
        with self._lock:
            left = self._holds[key] - 1
            if left:
                self._holds[key] = left
                return
            del self._holds[key]
        self._free.put(self._ours[key])

    def _key(self, data: memoryview | bytearray) -> int | None:
        owner = data.obj if isinstance(data, memoryview) else data
        key = id(owner)
        return key if self._ours.get(key) is owner else None
