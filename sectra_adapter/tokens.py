"""Getting a fresh Sectra callback token with the app's client credentials.

An invocation's token may expire before a long Strand job ends. Sectra issues a
new one from `POST {url}/token?applicationId=...` (HTTP Basic with the client
credentials, `client_credentials` grant). Tokens live in memory only: they are
never logged, persisted or put in an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

CONFIGURE_HINT = "set SECTRA_CLIENT_ID and SECTRA_CLIENT_SECRET"


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    application_id: str

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, application_id={self.application_id!r})"


class TokenGrant(BaseModel):
    """Sectra's answer to `/token`."""

    accessToken: str
    tokenType: str = "Bearer"
    expiresIn: int | None = None


def parse_grant(payload: object) -> TokenGrant | None:
    """The grant in a `/token` answer, or None when the answer is not one (never echoes it)."""
    try:
        return TokenGrant.model_validate(payload)
    except ValidationError:
        return None
