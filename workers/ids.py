"""The grammar of every identifier that reaches a Redis key, a URL or a file path, defined once.

Identifiers arrive from Sectra's invocations, the admin API, the CLI and the
apps file. Each is checked here before it is used, so an empty id cannot start
a run, an oversized one cannot fill Redis, and a crafted one (`run-x:events`)
cannot name a key of another type.
"""

from __future__ import annotations

import os
import re

# Our own run ids: `run_id_for` makes them from a SHA-256 digest.
_RUN_ID = re.compile(r"run-[0-9a-f]{24}")
# App ids name Redis index keys and registration URLs: a conservative URL-path-safe token.
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Sectra's ids (slide, cancellation token) are opaque: any printable text, bounded. They reach
# Redis only hashed into the run id, and URLs only percent-encoded as one path segment.
MAX_SECTRA_ID_CHARS = 256

RUN_ID_RULE = "'run-' followed by 24 lowercase hex digits"
APP_ID_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
SECTRA_ID_RULE = f"1-{MAX_SECTRA_ID_CHARS} printable characters, not only spaces"


def is_run_id(value: str) -> bool:
    return _RUN_ID.fullmatch(value) is not None


def is_app_id(value: str) -> bool:
    return _APP_ID.fullmatch(value) is not None


def is_sectra_id(value: str) -> bool:
    """A slide id or cancellation token from Sectra: non-blank, printable, bounded."""
    return len(value) <= MAX_SECTRA_ID_CHARS and value.isprintable() and bool(value.strip())


def random_token() -> str:
    """An opaque random token (a lease's, a step's): 128 bits as 32 hex digits, like `uuid4().hex`
    but without building a `UUID` (a few µs a call, and the create path makes several)."""
    return os.urandom(16).hex()


def uuid4_text() -> str:
    """`str(uuid.uuid4())` (RFC 9562 version 4, variant 10xx) without building a `UUID`, for the ids
    Celery gives its messages (task id, delivery tag)."""
    return _uuid4_form(os.urandom(16).hex())


def uuid4_pair() -> tuple[str, str]:
    """Two `uuid4_text()`s from one read of the system's random source (one system call, not two)."""
    digits = os.urandom(32).hex()
    return _uuid4_form(digits[:32]), _uuid4_form(digits[32:])


def _uuid4_form(digits: str) -> str:
    """32 random hex digits as a version 4 UUID: the version digit set, two variant bits set to 10."""
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"
