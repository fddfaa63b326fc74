"""The hand-made random ids, judged by the standard library's `uuid` (RFC 9562), not by themselves."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import pytest

from workers.ids import random_token, uuid4_pair, uuid4_text


@pytest.mark.parametrize("make", [lambda: [uuid4_text()], uuid4_pair], ids=["uuid4_text", "uuid4_pair"])
def test_uuid4_text_is_a_version_4_uuid_in_canonical_form(make: Callable[[], Sequence[str]]) -> None:
    seen = set()
    variants = set()
    for text in (text for _ in range(4000) for text in make()):
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lowercase, dashed 8-4-4-4-12
        variants.add(text[19])
        seen.add(text)
    assert len(seen) == 4000 * len(make())
    assert variants == set("89ab")  # all four variant digits occur: the two free bits are random


def test_random_token_is_128_random_bits_in_hex() -> None:
    tokens = {random_token() for _ in range(4000)}
    assert len(tokens) == 4000
    assert all(len(t) == 32 and int(t, 16) >= 0 and t == t.lower() for t in tokens)
    # Every hex digit shows up at every position over 4000 tokens (a constant nibble would not).
    assert all(len({t[i] for t in tokens}) == 16 for i in range(32))
