"""The OpenAPI 3.1 document of every route, with the IA-API invocation bodies as Sectra defines them.

The Sectra routes read their bodies by hand (to tell "not JSON", "too large" and "unknown
action" apart), so FastAPI cannot see them; their request bodies come from
`sectra_client.schemas`, the package Sectra ships, not from a copy of ours. Refusals are
documented once, as the `{"error", "message"}` shape every 4xx and 5xx carries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import Field, TypeAdapter
from sectra_client.schemas import (
    ApplicationInfo,
    CancelInvocation,
    CreateInvocation,
    DeleteInvocation,
    ModifyInvocation,
    NewImageFilesInvocation,
    Registration,
    ResultResponse,
)

from workers.settings import Settings

_REF = "#/components/schemas/{model}"
_WEBHOOK_INVOCATION = Annotated[
    CreateInvocation | ModifyInvocation | CancelInvocation | DeleteInvocation, Field(discriminator="action")
]
# Routes that answer something other than JSON (FastAPI documents every route as JSON).
_MEDIA_TYPES = {"/metrics": ("text/plain",), "/ui": ("text/html",)}
_READINESS = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
    "required": ["status", "checks"],
}
_ERROR = {
    "type": "object",
    "title": "Error",
    "description": "Every refusal: a stable machine-readable code and words for people.",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error", "message"],
    "additionalProperties": False,
}


def _schema(shape: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A body's schema (validation mode, as for requests), its nested models added to `components`."""
    schema = TypeAdapter(shape).json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    return schema


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi(app: FastAPI, app_ids: Iterable[str], settings: Settings) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for fastapi_only in ("HTTPValidationError", "ValidationError"):
        components.pop(fastapi_only, None)  # our 422 is the error shape below, not FastAPI's
    components["Error"] = _ERROR
    error_ref = {"$ref": "#/components/schemas/Error"}
    bodies = {
        ("/sectra/{app_id}", "post"): _schema(_WEBHOOK_INVOCATION, components),
        ("/sectra/{app_id}/imagenotification", "post"): _schema(NewImageFilesInvocation, components),
    }
    note = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    answers = {
        ("/sectra/{app_id}", "get"): _schema(Registration, components),
        ("/sectra/{app_id}/info", "get"): _schema(ApplicationInfo, components),
        # create: the pending result stored in Sectra; modify, cancel, delete: what was done.
        ("/sectra/{app_id}", "post"): {"oneOf": [_schema(ResultResponse, components), note]},
        ("/sectra/{app_id}/imagenotification", "post"): {"type": "object", "maxProperties": 0},
    }
    schemes = document["components"].setdefault("securitySchemes", {})
    schemes["adminToken"] = {"type": "http", "scheme": "bearer", "description": "BRIDGE_ADMIN_TOKEN"}
    if settings.webhook_token is not None:
        schemes["webhookToken"] = {"type": "http", "scheme": "bearer", "description": "BRIDGE_WEBHOOK_TOKEN"}
    known_apps = sorted(app_ids)
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = _json(error_ref, "Refused: the code and message say what was wrong")
            responses["5XX"] = _json(error_ref, "A dependency is down (503 with Retry-After) or a bug")
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "app_id":
                    # The apps this bridge serves; any other id answers 404 `unknown_app`.
                    parameter["schema"] = {"type": "string", "enum": known_apps}
            answer = answers.get((path, method))
            if answer is not None:
                responses["200"] = _json(answer, "OK")
            for media_type in _MEDIA_TYPES.get(path, ()):
                responses["200"] = {
                    "description": "OK",
                    "content": {media_type: {"schema": {"type": "string"}}},
                }
            if path == "/readyz":
                responses["503"] = _json(_READINESS, "Not ready: `checks` names the missing dependency")
            body = bodies.get((path, method))
            if body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                }
            if path.startswith(("/runs", "/ui")):
                operation["security"] = [{"adminToken": []}]
            elif path.startswith("/sectra") and method == "post" and "webhookToken" in schemes:
                operation["security"] = [{"webhookToken": []}]
    return document
