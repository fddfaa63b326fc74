"""What may be sent in an HTTP header field, checked before a value from the network is used as one.

RFC 9110 §5.5: `field-value = *field-content`, built of visible US-ASCII
(VCHAR), SP and HTAB, with no whitespace at either end; obs-text (bytes
0x80-0xFF) is obsolete and CR, LF and NUL are never allowed. A value outside
that grammar either breaks the message (CR/LF splits it) or cannot be encoded
at all, so it is refused where it enters, never at the socket.
"""

from __future__ import annotations

import re

# RFC 9110 §11.2: token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# (the credentials of `Authorization: Bearer`, RFC 6750 §2.1 b64token).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 9110 §5.5 field-content, without obs-text: starts and ends with a VCHAR.
_FIELD_VALUE = re.compile(r"[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?")

MAX_TOKEN_CHARS = 8192
MAX_VALUE_CHARS = 256


def is_token68(value: str, max_chars: int = MAX_TOKEN_CHARS) -> bool:
    """True for a bearer credential that can be sent as `Authorization: Bearer <value>`."""
    return len(value) <= max_chars and _TOKEN68.fullmatch(value) is not None


def is_field_value(value: str, max_chars: int = MAX_VALUE_CHARS) -> bool:
    """True for a non-empty header field value in RFC 9110's grammar (visible ASCII, SP, HTAB)."""
    return len(value) <= max_chars and _FIELD_VALUE.fullmatch(value) is not None
