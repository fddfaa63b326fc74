"""One error shape for every refusal: `{"error": code, "message": words}`, and never a stray 500.

Sectra shows our answers to administrators and retries on 5xx, so a bad
request must come back as a 4xx that names the problem, and a 5xx must mean
"try again later" (our dependency is down) or a genuine bug, nothing else.
Messages name fields, never their values: an invocation may carry patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}
_MAX_LISTED_ERRORS = 5
# Seconds a caller should wait before retrying when a dependency is down (RFC 9110 §10.2.3).
REDIS_RETRY_AFTER_SECONDS = 5
SECTRA_RETRY_AFTER_SECONDS = 10
# Redis cannot take the command now (down, restarting, loading its AOF, failed over); unlike a
# ResponseError, which is a bug of ours, each clears up by itself.
_REDIS_DOWN: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ReadOnlyError,
)

HeadersFor = Callable[[Request], Mapping[str, str]]


class ApiError(Exception):
    """A refusal with its HTTP status, a stable machine-readable code and a message for people."""

    def __init__(
        self, status_code: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def unavailable(code: str, message: str, retry_after: int) -> ApiError:
    """The one outage answer for every route: 503, `Retry-After`, and words naming the dependency."""
    return ApiError(503, code, message, headers={"Retry-After": str(retry_after)})


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": code, "message": message}, status_code=status_code, headers=dict(headers or {})
    )


def describe_validation_errors(
    errors: Iterable[Mapping[str, Any]], *, skip_leading: Iterable[str] = ()
) -> str:
    """'field': problem; ... for the first few errors, naming each field by its dotted path.

    `skip_leading` drops a discriminator tag pydantic puts in front of the path (e.g. `create`).
    """
    skipped = set(skip_leading)
    parts = []
    errors = list(errors)
    for error in errors[:_MAX_LISTED_ERRORS]:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in skipped:
            loc = loc[1:]
        if loc and loc[0] in ("body", "query", "path", "header"):
            where, loc = loc[0], loc[1:]
            field = f"{where} '{'.'.join(loc)}'" if loc else where
        else:
            field = f"field '{'.'.join(loc)}'" if loc else "the body"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    more = len(errors) - _MAX_LISTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more problem(s)")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI, headers_for: HeadersFor) -> None:
    """Route every failure through the JSON error shape, with the headers the path requires."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {**headers_for(request), **exc.headers}
        return error_response(exc.status_code, exc.code, exc.message, headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message = describe_validation_errors(exc.errors())
        return error_response(422, "invalid_request", message, headers_for(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        headers = {**headers_for(request), **(exc.headers or {})}
        return error_response(exc.status_code, code, message, headers)

    async def on_redis_down(request: Request, exc: Exception) -> JSONResponse:
        # Every write is one atomic step (see `RunStore`), so a failed one left nothing half-done.
        log.warning(
            "Redis is unavailable", extra={"error_type": type(exc).__name__, "path": request.url.path}
        )
        message = "the run store (Redis) is unavailable; retry later"
        refusal = unavailable("redis_unavailable", message, REDIS_RETRY_AFTER_SECONDS)
        return await on_api_error(request, refusal)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A true bug. The traceback goes to the log (redacted by the formatter), not to the caller.
        log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
        return error_response(
            500, "internal_error", "an unexpected error occurred; see the service log", headers_for(request)
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for down in _REDIS_DOWN:
        app.add_exception_handler(down, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)
