"""Optional bearer tokens on the webhook and the admin API, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from pydantic import SecretStr

from service.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_matches(authorization: str | None, expected: SecretStr) -> bool:
    """True when the header is `Bearer <expected>`; the comparison leaks no timing about the token."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Compare fixed-length digests, so not even the token's length shows in the timing.
    return hmac.compare_digest(
        hashlib.sha256(presented.strip().encode()).digest(),
        hashlib.sha256(expected.get_secret_value().encode()).digest(),
    )


def require_webhook_token(request: Request, expected: SecretStr | None) -> None:
    """No-op when `BRIDGE_WEBHOOK_TOKEN` is unset (the hospital relies on network policy instead)."""
    if expected is not None and not bearer_matches(request.headers.get("authorization"), expected):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer' token is required", headers=_CHALLENGE
        )


def require_admin_token(request: Request, expected: SecretStr | None) -> None:
    """The admin API exists only when `BRIDGE_ADMIN_TOKEN` is set; otherwise it answers 404."""
    if expected is None:
        raise ApiError(404, "not_found", f"no route {request.method} {request.url.path}")
    if not bearer_matches(request.headers.get("authorization"), expected):
        raise ApiError(
            401, "unauthorized", "a valid 'Authorization: Bearer' admin token is required", headers=_CHALLENGE
        )
