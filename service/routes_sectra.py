"""The routes Sectra calls: registration, info, invocations and image notifications.

Checks run cheapest and safest first: auth, app, body, then the callback URL
allow-list, and only after that anything that talks to the callback URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sectra_client.schemas import (
    CancelInvocation,
    CreateInvocation,
    DeleteInvocation,
    ModifyInvocation,
    NewImageFilesInvocation,
)

from sectra_adapter import check_slide
from service import webhook
from service.auth import require_webhook_token
from service.errors import ApiError
from service.parsing import AnyInvocation, parse_invocation, read_json_body
from service.registration import app_info, build_registration
from service.sectra_link import DEFAULT_HEADERS, cached_callback_headers, callback_headers, check_callback
from service.state import ServiceState, get_state
from workers.apps import AppConfig
from workers.observability import run_context
from workers.quality import is_rejected

log = logging.getLogger(__name__)


class _PlainRoute(APIRoute):
    """A route FastAPI matches and documents, whose endpoint gets the request and its path parameters
    as they are: no dependency solving or parameter validation per request (FastAPI's "custom APIRoute
    class"). For the invocation routes, which read and validate their bodies themselves
    (`service.parsing`) and are what Sectra calls most."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request=request, **request.path_params)
            return response

        return handler


def _app(state: ServiceState, app_id: str) -> AppConfig:
    app = state.apps.get(app_id)
    if app is None:
        raise ApiError(404, "unknown_app", f"no app {app_id!r} is configured on this bridge")
    return app


async def _invocation_for(
    request: Request, state: ServiceState, app_id: str
) -> tuple[AppConfig, AnyInvocation]:
    require_webhook_token(request, state.settings.webhook_token)
    app = _app(state, app_id)
    invocation = parse_invocation(await read_json_body(request))
    if invocation.applicationId != app_id:
        raise ApiError(
            400, "app_id_mismatch", "field 'applicationId' does not match the app id in the URL path"
        )
    return app, invocation


async def _checked_headers(
    request: Request, state: ServiceState, invocation: AnyInvocation
) -> dict[str, str]:
    """Refuse a callback URL off the allow-list, then learn this Sectra's versions for our answer."""
    check_callback(state, invocation.callbackInfo.url)
    headers = cached_callback_headers(state, invocation.callbackInfo.url)
    if headers is None:  # first call to this Sectra this hour: ask its /info, off the event loop
        headers = await anyio.to_thread.run_sync(
            callback_headers, state, invocation.callbackInfo.url, invocation.callbackInfo.token
        )
    request.state.sectra_headers = headers  # error answers from here on carry them too
    return headers


def registration(app_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    app = _app(state, app_id)
    base = (state.settings.public_url or str(request.base_url)).rstrip("/")
    body = build_registration(app, f"{base}/sectra/{app.id}").model_dump(mode="json")
    return JSONResponse(body, headers=DEFAULT_HEADERS)


def info(app_id: str, request: Request) -> JSONResponse:
    app = _app(get_state(request), app_id)
    return JSONResponse(app_info(app).model_dump(mode="json"), headers=DEFAULT_HEADERS)


async def invoke(app_id: str, request: Request) -> Response:
    state = get_state(request)
    app, invocation = await _invocation_for(request, state, app_id)
    if isinstance(invocation, NewImageFilesInvocation):
        raise ApiError(
            400, "unexpected_action", f"'newImageFiles' goes to /sectra/{app_id}/imagenotification"
        )
    headers = await _checked_headers(request, state, invocation)
    if isinstance(invocation, CreateInvocation):
        result = await webhook.start_run(state, app, invocation, "create")
        return Response(result, media_type="application/json", headers=headers)
    if isinstance(invocation, CancelInvocation):
        note = await anyio.to_thread.run_sync(webhook.cancel_sync, state, app, invocation)
    elif isinstance(invocation, ModifyInvocation):
        # A reviewed hotspot gallery is answered with the result Sectra now stores (Sectra's
        # `ia_app_basic` does the same for every modify); any other modify with a note.
        answer = await anyio.to_thread.run_sync(webhook.modify_sync, state, app, invocation)
        return JSONResponse(answer, headers=headers)
    else:
        assert isinstance(invocation, DeleteInvocation)
        note = await anyio.to_thread.run_sync(webhook.delete_sync, state, app, invocation)
    return JSONResponse({"note": note}, headers=headers)


async def image_notification(app_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    app, invocation = await _invocation_for(request, state, app_id)
    if not isinstance(invocation, NewImageFilesInvocation):
        raise ApiError(400, "unexpected_action", f"only 'newImageFiles' is accepted on {request.url.path}")
    with run_context(app=app.id):
        if not app.start_on_new_images:
            log.info("image notification ignored: the app does not start runs on new images")
            return JSONResponse({}, headers=DEFAULT_HEADERS)
        if is_rejected(invocation.imageInfo):
            # Automatic runs never analyse a slide the lab's QC rejected (`workers.quality`).
            log.info("image notification ignored: Sectra's quality control rejected the slide")
            return JSONResponse({}, headers=DEFAULT_HEADERS)
        reason = check_slide(invocation.imageInfo, **app.slide_gate.model_dump())
        if reason is not None:
            log.info("image notification ignored: the slide does not pass the gate", extra={"reason": reason})
            return JSONResponse({}, headers=DEFAULT_HEADERS)
    headers = await _checked_headers(request, state, invocation)
    await webhook.start_run(state, app, invocation, "newImageFiles")
    return JSONResponse({}, headers=headers)


def add_routes(app: FastAPI) -> None:
    """The routes Sectra calls, on `app` itself and ahead of any other route (routes match in order,
    and the invocation routes are what Sectra calls most). Not an included router: FastAPI (0.165)
    dispatches each request to one through a live wrapper of that router (`_IncludedRouter`), which
    cost ~12 µs a request here, against ~70 µs for the bare endpoint's whole ASGI call."""
    add = app.router.add_api_route
    add("/sectra/{app_id}", invoke, methods=["POST"], route_class_override=_PlainRoute)
    add(
        "/sectra/{app_id}/imagenotification",
        image_notification,
        methods=["POST"],
        route_class_override=_PlainRoute,
    )
    add("/sectra/{app_id}", registration, methods=["GET"])
    add("/sectra/{app_id}/info", info, methods=["GET"])
