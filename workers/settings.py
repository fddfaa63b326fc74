"""Process-wide settings, read from the environment (and a `.env` file).

The variable names are a deployment contract (README.md, Configuration): Helm charts and
hospital runbooks set them, so they are spelled out here rather than derived.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sectra_adapter import is_token68


class Settings(BaseSettings):
    """Every knob the bridge reads; defaults are safe for a hospital (refuse, not allow)."""

    # Errors name the variable, never its value: several hold secrets.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    strand_api_key: SecretStr | None = Field(default=None, alias="STRAND_API_KEY")
    strand_base_url: str = Field(default="https://app.strandai.com", alias="STRAND_BASE_URL")
    redis_url: str = Field(default="redis://localhost:6379/0", alias="REDIS_URL")
    apps_file: Path | None = Field(default=None, alias="BRIDGE_APPS_FILE")
    allowed_callback_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="SECTRA_ALLOWED_CALLBACK_URLS"
    )
    allow_http: bool = Field(default=False, alias="SECTRA_ALLOW_HTTP")
    webhook_token: SecretStr | None = Field(default=None, alias="BRIDGE_WEBHOOK_TOKEN")
    admin_token: SecretStr | None = Field(default=None, alias="BRIDGE_ADMIN_TOKEN")
    work_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "sectra-bridge", alias="BRIDGE_WORK_DIR"
    )
    # Sectra client credentials for refreshing an expired callback token (POST /token).
    sectra_client_id: str | None = Field(default=None, alias="SECTRA_CLIENT_ID")
    sectra_client_secret: SecretStr | None = Field(default=None, alias="SECTRA_CLIENT_SECRET")
    # How long run records and their audit trail are kept in Redis.
    run_retention_days: int = Field(default=30, alias="BRIDGE_RUN_RETENTION_DAYS", ge=1)
    log_level: str = Field(default="INFO", alias="BRIDGE_LOG_LEVEL")
    # 0 = one Strand status query per wait step; > 0 = follow the SSE stream that long per step.
    wait_slice_seconds: float = Field(default=0.0, alias="BRIDGE_WAIT_SLICE_SECONDS", ge=0, le=60)
    progress_interval_seconds: float = Field(default=5.0, alias="BRIDGE_PROGRESS_INTERVAL_SECONDS", ge=0)
    # A run lease outlives a dead worker by at most this long before recovery re-drives the run; a
    # heartbeat renews it every third of this while a step runs, so a long transfer keeps its run.
    lease_seconds: float = Field(default=15.0, alias="BRIDGE_LEASE_SECONDS", gt=1)
    # A failed run's slide files (the originals and the de-identified copy) are deleted this long
    # after it failed; `runs retry` after that fetches and de-identifies the slide again.
    staged_retention_hours: float = Field(default=24.0, alias="BRIDGE_STAGED_RETENTION_HOURS", ge=0)
    # How often each worker's janitor sweeps its own work volume (it also sweeps at start-up).
    janitor_interval_seconds: float = Field(default=300.0, alias="BRIDGE_JANITOR_INTERVAL_SECONDS", gt=0)
    worker_soft_shutdown_seconds: float = Field(
        default=60.0, alias="BRIDGE_WORKER_SOFT_SHUTDOWN_SECONDS", ge=0
    )
    worker_metrics_port: int = Field(default=9100, alias="BRIDGE_WORKER_METRICS_PORT")
    public_url: str | None = Field(default=None, alias="BRIDGE_PUBLIC_URL")
    # Strand credits the whole bridge may reserve per UTC day, all apps together (`workers.quotas`).
    daily_credit_limit: int | None = Field(default=None, alias="BRIDGE_DAILY_CREDIT_LIMIT", ge=0)
    # How long a finished Strand job's results are read again instead of a new job (`workers.reuse`):
    # every region run, and whole-slide runs of apps with `reuse_results: true`. 0 = never reuse.
    results_reuse_days: float = Field(default=7.0, alias="BRIDGE_RESULTS_REUSE_DAYS", ge=0)
    # HTTP limits of `sectra-bridge serve` (service/server.py; README "HTTP limits" gives the reasons).
    http_max_header_bytes: int = Field(default=64 * 1024, alias="BRIDGE_HTTP_MAX_HEADER_BYTES", ge=1024)
    http_header_timeout_seconds: float = Field(default=10.0, alias="BRIDGE_HTTP_HEADER_TIMEOUT_SECONDS", gt=0)
    http_body_timeout_seconds: float = Field(default=30.0, alias="BRIDGE_HTTP_BODY_TIMEOUT_SECONDS", gt=0)
    http_keepalive_seconds: int = Field(default=5, alias="BRIDGE_HTTP_KEEPALIVE_SECONDS", ge=1)
    http_max_connections: int = Field(default=256, alias="BRIDGE_HTTP_MAX_CONNECTIONS", ge=1)

    @field_validator("allowed_callback_urls", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("strand_api_key")
    @classmethod
    def _sendable_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Sent as `Authorization: Bearer <key>`: refused at start-up, not at the first call to Strand.
        if value is not None and not is_token68(value.get_secret_value()):
            raise ValueError("STRAND_API_KEY must be a bearer token (RFC 9110 token68: no spaces or quotes)")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """One parsed settings object per process; tests call `get_settings.cache_clear()`."""
    return Settings()
