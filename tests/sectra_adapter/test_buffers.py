"""The receive-buffer pool: a buffer goes back into use only after every hold on it is given back."""

from __future__ import annotations

import threading

import pytest

from sectra_adapter._buffers import BufferPool


def test_a_buffer_comes_back_only_after_its_last_hold() -> None:
    pool = BufferPool(1, 16)
    first = pool.take()
    view = memoryview(first)[2:5]
    pool.retain(view)  # a consumer's hold, as BackgroundConsumer.submit takes it
    pool.release(first)  # the taker moves on; the consumer still reads
    handed_out = threading.Event()

    def take_again() -> None:
        assert pool.take() is first
        handed_out.set()

    taker = threading.Thread(target=take_again)
    taker.start()
    assert not handed_out.wait(0.2)  # still held: nobody may refill it
    pool.release(view)
    taker.join(timeout=10)
    assert handed_out.is_set()


def test_views_of_other_memory_are_not_the_pools_business() -> None:
    pool = BufferPool(2, 8)
    foreign = memoryview(bytearray(8))
    pool.retain(foreign)
    pool.release(foreign)
    pool.release(memoryview(b"bytes"))
    taken = [pool.take(), pool.take()]
    assert taken[0] is not taken[1] and all(len(b) == 8 for b in taken)


def test_each_buffer_is_lent_to_one_taker_at_a_time() -> None:
    pool = BufferPool(3, 4)
    held = [pool.take() for _ in range(3)]
    assert len({id(b) for b in held}) == 3
    for buffer in held:
        pool.release(buffer)
    again = [pool.take() for _ in range(3)]
    assert {id(b) for b in again} == {id(b) for b in held}


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError):
        BufferPool(0, 10)
