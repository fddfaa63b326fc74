"""This bridge's memory of which Strand upload holds which de-identified slide.

Keyed by the SHA-256 of the bytes sent, so two apps (or a retry) on the same
slide send it once. Entries expire with the run retention; a stale entry is
caught by the caller's `GET /uploads/{id}` check.
"""

from __future__ import annotations

import redis


class UploadIndex:
    def __init__(self, client: redis.Redis, *, prefix: str = "bridge", ttl_seconds: int = 30 * 86400) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _key(self, sha256: str) -> str:
        return f"{self._prefix}:upload-by-sha:{sha256}"

    def get(self, sha256: str) -> str | None:
        value = self._redis.get(self._key(sha256))
        return value.decode() if isinstance(value, bytes) else value

    def remember(self, sha256: str, upload_id: str) -> None:
        self._redis.set(self._key(sha256), upload_id, ex=self._ttl)

    def forget(self, sha256: str) -> None:
        self._redis.delete(self._key(sha256))

    def claim_job(self, job_id: str, run_id: str) -> bool:
        """Mark a Strand job as belonging to one run; False when another run already holds it."""
        key = f"{self._prefix}:job-owner:{job_id}"
        if self._redis.set(key, run_id, nx=True, ex=self._ttl):
            return True
        owner = self._redis.get(key)
        return (owner.decode() if isinstance(owner, bytes) else owner) == run_id
