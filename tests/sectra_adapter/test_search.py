"""The delimiter search answers exactly as `bytes.find` (CPython's own search is the oracle)."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sectra_adapter import _search

NEEDLE = b"\r\n--3c5e-boundary-for-tests"


@st.composite
def haystacks(draw: st.DrawFn) -> tuple[bytes, int]:
    """Filler around planted needles and near-misses (a needle cut short), long enough for memmem."""
    size = draw(st.integers(min_value=0, max_value=300_000))
    filler = draw(st.sampled_from([b"\r", b"-", b"\r\n-", b"x", b"\x00\xff"]))
    data = bytearray((filler * (size // len(filler) + 1))[:size])
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        piece = NEEDLE[: draw(st.integers(min_value=1, max_value=len(NEEDLE)))]
        at = draw(st.integers(min_value=0, max_value=max(0, len(data) - len(piece))))
        data[at : at + len(piece)] = piece[: len(data) - at]
    start = draw(st.integers(min_value=-5, max_value=len(data) + 5))
    return bytes(data), start


@settings(max_examples=200, deadline=None)
@given(haystacks())
def test_the_first_needle_is_found_exactly_where_bytes_find_finds_it(case: tuple[bytes, int]) -> None:
    data, start = case
    if start < 0:
        start = 0  # bytes.find reads a negative start from the end; the parser never passes one
    expected = data.find(NEEDLE, start)
    assert _search.find(data, NEEDLE, start) == expected
    assert _search.find(bytearray(data), NEEDLE, start) == expected


def test_a_needle_at_the_very_end_and_at_the_start_of_a_long_buffer() -> None:
    body = bytearray(b"\xab" * 1024 * 1024)
    assert _search.find(body, NEEDLE) == -1
    body[-len(NEEDLE) :] = NEEDLE
    assert _search.find(body, NEEDLE) == len(body) - len(NEEDLE)
    assert _search.find(body, NEEDLE, len(body) - len(NEEDLE) + 1) == -1
    body[: len(NEEDLE)] = NEEDLE
    assert _search.find(body, NEEDLE) == 0
    assert _search.find(bytes(body), NEEDLE, 1) == len(body) - len(NEEDLE)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc and musl both have memmem")
def test_the_c_librarys_search_is_the_one_in_use_on_linux() -> None:
    assert _search._MEMMEM is not None


def test_without_memmem_bytes_find_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_search, "_MEMMEM", None)
    body = b"\x00" * 200_000 + NEEDLE + b"\x00" * 10
    assert _search.find(body, NEEDLE, 5) == 200_000
