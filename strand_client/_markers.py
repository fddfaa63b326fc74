"""`client.markers`: the markers this organisation may request."""

from __future__ import annotations

from strand_client._http import HttpSession


class Markers:
    """Namespace exposed as `Client.markers`."""

    def __init__(self, http: HttpSession) -> None:
        self._http = http

    def list(self) -> list[str]:
        """`GET /markers`: names a submit will accept (entitlement-scoped, so it can differ per org)."""
        entries = self._http.get_json("/markers").get("markers")
        if not isinstance(entries, list):
            return []
        names = (e.get("name") if isinstance(e, dict) else e for e in entries)
        return [str(n) for n in names if n]
