"""The log formatter's quick checks for secrets never let through what its patterns would mask.

Oracle: the three patterns themselves, applied one by one as `redact` applied them before the quick
checks existed. Text is drawn from the patterns' own vocabulary (mixed case, quotes, separators,
non-ASCII look-alikes), so hypothesis spends its examples near the edges that matter.
"""

from __future__ import annotations

import json
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.observability import _SECRET_PATTERNS, JsonFormatter, may_hold_secret, redact, run_context

pieces = st.sampled_from(
    ["sk-strand-", "Bearer", "bAsIc", "TOKEN", "api_key", "Api-Key", "apikey", "secret", "PassWord", "é",
     "\u017fecret", "\u212aey", "toKen", " ", "\t", "\n", "=", ":", "'", '"', "abc123", "x.y~z", ",", "}"]
)  # fmt: skip
texts = st.lists(st.one_of(pieces, st.text(max_size=4)), max_size=12).map("".join)


def _masked_by_the_patterns(text: str) -> str:
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)} ***", text)
    text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_PATTERNS[0].sub("sk-strand-***", text)


@settings(max_examples=2000, deadline=None)
@given(texts)
def test_the_quick_check_misses_nothing_a_pattern_masks(text: str) -> None:
    masked = _masked_by_the_patterns(text)
    if masked != text:
        assert may_hold_secret(text)
    assert redact(text) == masked


def test_each_credential_is_masked_as_one() -> None:
    """A Strand key in a bearer header or under a key's name leaves no fragment of itself behind."""
    assert redact("Authorization: Bearer sk-strand-abc123") == "Authorization: Bearer ***"
    assert redact("token=sk-strand-xyz, then sk-strand-def") == "token=***, then sk-strand-***"
    assert redact('{"api_key": "sk-strand-q"}') == '{"api_key": "***"}'


def test_a_log_line_with_a_secret_in_any_field_is_masked() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "call failed", None, None)
    record.detail = "Authorization: Bearer abc.def-123"
    with run_context(run_id="run-0123456789abcdef01234567"):
        line = json.loads(JsonFormatter().format(record))
    assert line["detail"] == "Authorization: Bearer ***"
    plain = logging.LogRecord("t", logging.INFO, __file__, 1, "run created", None, None)
    assert json.loads(JsonFormatter().format(plain))["event"] == "run created"


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_RESERVED |= {"ts", "level", "logger", "event", "run_id", "app"}  # the line's own keys
extra_keys = texts.filter(lambda key: key[:1] not in ("", "_") and key not in _RESERVED)


@settings(max_examples=1000, deadline=None)
@given(message=texts, extras=st.dictionaries(extra_keys, texts, max_size=3))
def test_a_line_is_masked_as_the_patterns_mask_each_of_its_strings(
    message: str, extras: dict[str, str]
) -> None:
    """Whatever the formatter checks first (the whole line at once), each key and string of the line is
    what the patterns make of it on its own."""
    record = logging.LogRecord("bridge.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extras)
    with run_context(run_id="run-0123456789abcdef01234567", app="strand-default"):
        line = json.loads(JsonFormatter().format(record))
    assert line["event"] == _masked_by_the_patterns(message)
    assert line["run_id"] == "run-0123456789abcdef01234567" and line["level"] == "info"
    expected = {_masked_by_the_patterns(key): _masked_by_the_patterns(value) for key, value in extras.items()}
    assert {key: line[key] for key in expected} == expected
