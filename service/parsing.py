"""Reading and validating an invocation body, with a distinct 4xx for each way it can be wrong.

Sectra's administrators read these answers when an integration misbehaves, so
"not JSON", "unknown action" and "field X missing" are told apart. Messages
name fields, never values (an invocation carries a callback token and may
carry patient data).
"""

from __future__ import annotations

from typing import TypeAlias

from fastapi import Request
from pydantic import TypeAdapter, ValidationError
from sectra_client.schemas import (
    Action,
    CancelInvocation,
    CreateInvocation,
    DeleteInvocation,
    Invocation,
    ModifyInvocation,
    NewImageFilesInvocation,
)
from starlette.requests import ClientDisconnect

from sectra_adapter import MAX_TOKEN_CHARS, is_token68
from service.errors import ApiError, describe_validation_errors
from workers.ids import SECTRA_ID_RULE, is_sectra_id

MAX_BODY_BYTES = 1 << 20
# Building Python objects costs ~1 µs per JSON value and holds the GIL (a worker thread would stall
# the event loop just the same), so the number of values is capped, not only the bytes. A real
# invocation has a few hundred; 1 MiB of `[0,0,...]` would have half a million.
MAX_JSON_VALUES = 20_000
MAX_CALLBACK_URL_CHARS = 2048

AnyInvocation: TypeAlias = (
    CreateInvocation | ModifyInvocation | CancelInvocation | DeleteInvocation | NewImageFilesInvocation
)

_INVOCATION: TypeAdapter[AnyInvocation] = TypeAdapter(Invocation)
_ACTIONS = tuple(action.value for action in Action)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused early when it is not JSON or is larger than `limit` bytes.

    The size is enforced while streaming, so a client lying in Content-Length (or
    sending chunked) cannot make the service buffer more than `limit`.
    """
    if not _is_json(request.headers.get("content-type", "")):
        raise ApiError(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to read the answer; a 4xx keeps it out of the error log.
        raise ApiError(400, "client_disconnected", "the client closed the connection mid-body") from None
    return b"".join(chunks)


def parse_invocation(raw: bytes) -> AnyInvocation:
    """The validated invocation, or an `ApiError` naming the first problem; cheap for any body.

    Values that go into a header, a URL or a Redis key are checked here, where they enter,
    so nothing downstream (Sectra calls, the run store) ever sees one it cannot use.
    """
    # Every value but the first follows a ',' or opens a '[' / '{': a C-speed upper bound.
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") >= MAX_JSON_VALUES:
        raise ApiError(413, "body_too_large", f"the body holds more than {MAX_JSON_VALUES} JSON values")
    try:
        invocation = _INVOCATION.validate_json(raw)
    except ValidationError as exc:
        raise _refusal(exc) from None
    _check_fields(invocation)
    return invocation


def _check_fields(invocation: AnyInvocation) -> None:
    def refuse(field: str, rule: str) -> ApiError:
        return ApiError(422, "invalid_invocation", f"field '{field}' must be {rule}")

    if not is_sectra_id(invocation.slideId):
        raise refuse("slideId", SECTRA_ID_RULE)
    token = invocation.cancellationToken
    # Only `delete` may omit it (it then names the result instead).
    if not (isinstance(invocation, DeleteInvocation) and not token) and not is_sectra_id(token or ""):
        raise refuse("cancellationToken", SECTRA_ID_RULE)
    if len(invocation.callbackInfo.url) > MAX_CALLBACK_URL_CHARS:
        raise refuse("callbackInfo.url", f"at most {MAX_CALLBACK_URL_CHARS} characters")
    # It is sent back as `Authorization: Bearer <token>` (RFC 9110 §11.2 token68).
    if not is_token68(invocation.callbackInfo.token):
        raise refuse(
            "callbackInfo.token",
            f"a bearer token of at most {MAX_TOKEN_CHARS} characters "
            "(letters, digits, '-', '.', '_', '~', '+', '/', then '=' padding)",
        )


def _refusal(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    top = {error["type"] for error in errors if not error["loc"]}
    if "json_invalid" in top:
        detail = next(e["msg"] for e in errors if e["type"] == "json_invalid")
        return ApiError(400, "malformed_json", f"the body is not valid JSON ({detail})")
    if top & {"dict_type", "model_type", "model_attributes_type"}:
        return ApiError(422, "invalid_invocation", "the body must be a JSON object")
    if "union_tag_not_found" in top:
        return ApiError(
            422, "invalid_invocation", f"field 'action' is required: one of {', '.join(_ACTIONS)}"
        )
    if "union_tag_invalid" in top:
        return ApiError(400, "unknown_action", f"field 'action' must be one of {', '.join(_ACTIONS)}")
    # pydantic's text for a bad nested tag quotes the value; name the field without it.
    for error in errors:
        if error["type"] == "union_tag_invalid":
            error["msg"] = "unknown 'type'"
    return ApiError(422, "invalid_invocation", describe_validation_errors(errors, skip_leading=_ACTIONS))
