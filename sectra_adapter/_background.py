"""A bounded hand-off to a worker thread, so disk writes and hashing overlap the network.

Both `os.write` and `hashlib`'s update release the GIL on large buffers, so a
slide's bytes can be received, written and hashed on three cores at once. The
queue is bounded, which bounds memory: a slow disk slows the download instead
of piling chunks up in RAM.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

_STOP = memoryview(b"")  # identity-compared sentinel


class Lender(Protocol):
    """Owns the memory items view (`sectra_adapter._buffers.BufferPool`): held while queued or read."""

    def retain(self, data: memoryview) -> None: ...

    def release(self, data: memoryview) -> None: ...


class BackgroundConsumer:
    """Calls `consume(item)` for every submitted item, in order, on its own thread.

    The first error the consumer raises is re-raised to the submitting thread
    (on the next `submit` or on `close`); items after it are dropped. With a
    `lender`, each item is held from `submit` until it is consumed or dropped,
    so the buffer it views is not refilled under the consumer.
    """

    def __init__(
        self,
        consume: Callable[[memoryview], object],
        depth: int = 8,
        name: str = "consumer",
        lender: Lender | None = None,
    ) -> None:
        self._consume = consume
        self._lender = lender
        self._queue: queue.Queue[memoryview] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._lender is not None:
            self._lender.retain(item)
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item is consumed; re-raise the consumer's error if it had one."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                if self._error is None:
                    self._consume(item)
            except BaseException as exc:  # handed to the submitting thread
                self._error = exc
            finally:
                if self._lender is not None:
                    self._lender.release(item)
