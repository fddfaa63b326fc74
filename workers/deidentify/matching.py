"""Find any of a slide's identifying strings in a blob of text, and say which field it was.

Identifiers are matched case-insensitively; short ones only as whole tokens
(so an exam id "4711" does not fire inside "0.47112"), and long ones also in
their base64 forms, because some vendors (Philips) keep barcodes base64 in XML.
Values stay inside compiled patterns in this object's memory; only field names
ever come out.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

MIN_LENGTH = 4  # shorter strings (a "1", a "No") would match everywhere and identify no one
_TOKEN_BELOW = 8
_BASE64_FROM = 6


class IdentifierMatcher:
    def __init__(self, identifiers: Mapping[str, str]) -> None:
        self._patterns: list[tuple[str, re.Pattern[bytes]]] = []
        for field, value in identifiers.items():
            text = str(value).strip()
            if len(text) < MIN_LENGTH:
                continue
            raw = text.encode("utf-8")
            escaped = re.escape(raw)
            if len(text) < _TOKEN_BELOW:
                escaped = rb"(?<![A-Za-z0-9])" + escaped + rb"(?![A-Za-z0-9])"
            self._patterns.append((field, re.compile(escaped, re.IGNORECASE)))
            if len(raw) >= _BASE64_FROM:
                alternatives = b"|".join(re.escape(form) for form in _base64_forms(raw))
                self._patterns.append((field, re.compile(alternatives)))

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def find(self, data: bytes) -> str | None:
        """The field name of the first identifier found in `data`, or None."""
        for field, pattern in self._patterns:
            if pattern.search(data):
                return field
        return None


def _base64_forms(raw: bytes) -> list[bytes]:
    """The part of base64(raw) that is the same wherever `raw` starts within the encoded stream."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        skip = (shift * 4 + 2) // 3
        core = encoded[skip:-4]
        if len(core) >= 4:
            forms.append(core)
    return forms
