"""The admin API: read-only views of runs for operators, behind `BRIDGE_ADMIN_TOKEN`.

Views come from `RunRecord.public_dict()`, which leaves out the Sectra callback
token and the Strand upload session URL: an operator's screen is not a place
for credentials.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request

from service.auth import require_admin_token
from service.errors import ApiError
from service.state import get_state
from workers.ids import APP_ID_RULE, RUN_ID_RULE, is_app_id, is_run_id
from workers.runstore import RunStatus


def _admin_only(request: Request) -> None:
    # A router dependency runs before query validation, so with the admin API off even a
    # malformed query answers 404, not a 422 that would reveal the route.
    require_admin_token(request, get_state(request).settings.admin_token)


router = APIRouter(prefix="/runs", dependencies=[Depends(_admin_only)])


@router.get("")
async def list_runs(
    request: Request,
    status: RunStatus | None = None,
    app: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    state = get_state(request)
    if app is not None and not is_app_id(app):
        raise ApiError(400, "invalid_app_id", f"query 'app' must be {APP_ID_RULE}")
    records = await anyio.to_thread.run_sync(
        lambda: state.store.list_runs(status=status, app_id=app, limit=limit)
    )
    return {"runs": [record.public_dict() for record in records]}


@router.get("/{run_id}")
async def show_run(run_id: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    # Checked before it becomes a Redis key: `run-x:events` would name the audit stream.
    if not is_run_id(run_id):
        raise ApiError(400, "invalid_run_id", f"path 'run_id' must be {RUN_ID_RULE}")
    record = await anyio.to_thread.run_sync(state.store.get, run_id)
    if record is None:
        raise ApiError(404, "unknown_run", f"no run {run_id!r}")
    events = await anyio.to_thread.run_sync(state.store.events, run_id)
    return {"run": record.public_dict(), "events": events}
