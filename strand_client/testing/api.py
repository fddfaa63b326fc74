"""The fake's REST routes under `/api/v1`: every documented status code and `{error, message}` body."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from strand_client.testing.faults import FaultMiddleware, Faults, error_body
from strand_client.testing.gcs import ResumableEndpoint
from strand_client.testing.result_store import ResultStores
from strand_client.testing.state import MODELS, FakeState, JobRecord, UploadRecord


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


class SseDropped(Exception):
    """Raised inside an SSE body to cut the connection mid-stream (fault injection)."""


class UploadBody(BaseModel):
    filename: str = Field(min_length=1)
    fileSize: int = Field(ge=0)
    contentType: str = "application/octet-stream"
    contentSha256: str | None = None


class PredictBody(BaseModel):
    uploadId: str
    markers: list[str] = Field(min_length=1)
    model: str | None = None
    dryRun: bool = False


def build_app(
    state: FakeState, faults: Faults, results: ResultStores, api_key: str, closing: threading.Event
) -> FaultMiddleware:
    """The whole fake as one ASGI app, wrapped in the fault-injection middleware."""
    app = FastAPI(title="Fake Strand", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {api_key}".encode()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", f"Invalid request body: {exc.errors()}"), 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    def authorize(request: Request) -> None:
        supplied = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            raise ApiError(401, "unauthorized", "Missing or invalid API key")

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)])

    def upload_or_404(upload_id: str) -> UploadRecord:
        upload = state.upload(upload_id)
        if upload is None:
            raise ApiError(404, "upload_not_found", f"Upload {upload_id} not found")
        return upload

    def job_or_404(job_id: str) -> JobRecord:
        job = state.job(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"Job {job_id} not found")
        return job

    def finished_job(job_id: str) -> JobRecord:
        job = job_or_404(job_id)
        if not job.has_results:
            raise ApiError(
                409, "job_not_completed", f"Job {job_id} is {job.status}; results are not available"
            )
        return job

    def check_markers(markers: list[str]) -> tuple[str, ...]:
        options = state.options
        unknown = [m for m in markers if m not in options.catalog]
        if unknown:
            message = f"Unknown markers: {', '.join(unknown)}"
            raise ApiError(400, "unknown_markers", message, unknownMarkers=unknown)
        entitled = options.entitled()
        unavailable = [m for m in markers if m not in entitled]
        if unavailable:
            message = f"Markers not available for this organization: {', '.join(unavailable)}"
            raise ApiError(
                403,
                "marker_not_available",
                message,
                unavailableMarkers=unavailable,
                availableMarkers=sorted(entitled),
            )
        return tuple(dict.fromkeys(markers))

    def priced(body: PredictBody) -> tuple[UploadRecord, tuple[str, ...], str, dict[str, int]]:
        upload = upload_or_404(body.uploadId)
        markers = check_markers(body.markers)
        model = body.model or state.options.default_model
        if model not in MODELS:
            raise ApiError(400, "unknown_model", f"Unknown model {model}; available: {', '.join(MODELS)}")
        if upload.width_px is None:
            raise ApiError(
                409, "upload_missing_dimensions", "Upload has no dimensions yet; complete it first"
            )
        return upload, markers, model, state.estimate(upload, len(markers))

    @api.post("/uploads")
    def create_upload(body: UploadBody, request: Request) -> dict[str, Any]:
        if body.contentSha256:
            existing = state.find_by_hash(body.contentSha256)
            if existing is not None:
                return {**existing.to_wire(), "existing": True}
        upload, session = state.open_upload(
            body.filename, body.fileSize, body.contentType, body.contentSha256
        )
        return {
            "uploadId": upload.id,
            "uploadUrl": f"{str(request.base_url).rstrip('/')}/gcs/upload/{session.token}",
            "gcsPath": upload.gcs_path,
        }

    @api.get("/uploads/{upload_id}")
    def get_upload(upload_id: str) -> dict[str, Any]:
        return upload_or_404(upload_id).to_wire()

    @api.post("/uploads/{upload_id}/complete")
    def complete_upload(upload_id: str) -> dict[str, Any]:
        upload = upload_or_404(upload_id)
        if upload.status == "upload_failed":
            raise ApiError(409, "upload_failed", "The stored object does not match the declared size or hash")
        if upload.width_px is None:
            raise ApiError(409, "upload_incomplete", "Not all bytes of the upload have arrived")
        state.mark_ready(upload)
        wire = upload.to_wire()
        return {k: wire[k] for k in ("uploadId", "status", "widthPx", "heightPx", "dimensionsSource")}

    @api.post("/predict/estimate")
    def estimate(body: PredictBody) -> dict[str, Any]:
        return priced(body)[3]

    @api.post("/predict", status_code=202, response_model=None)
    def predict(body: PredictBody) -> dict[str, Any] | JSONResponse:
        rejection = None
        try:
            upload, markers, model, cost = priced(body)
            if body.dryRun:
                return JSONResponse({**cost, "model": model, "dryRun": True})
            if upload.status != "ready":
                raise ApiError(409, "upload_not_ready", f"Upload is {upload.status}, not ready")
            rejection = faults.take_submit_rejection()
            if rejection is not None and not rejection.after_create:
                raise _rejection(rejection.status, rejection.retry_after)
            job = reserve(upload, markers, model, cost["estimatedCredits"])
        except ApiError:
            if not body.dryRun:
                with state.lock:
                    state.stats.submits_rejected += 1
            raise
        if rejection is not None:
            raise _rejection(rejection.status, rejection.retry_after)
        return {"jobId": job.id, "reservedCredits": job.reserved_credits, "status": "queued", "model": model}

    def reserve(upload: UploadRecord, markers: tuple[str, ...], model: str, credits: int) -> JobRecord:
        with state.lock:
            if state.active_jobs() >= state.options.max_concurrent_jobs:
                headers = {"Retry-After": str(state.options.concurrency_retry_after)}
                message = "Too many concurrent jobs for this organization"
                raise ApiError(429, "concurrency_limit", message, headers=headers)
            available = state.balance - state.pending()
            if available < credits:
                message = f"Insufficient credits: {credits} required, {available} available"
                raise ApiError(402, "insufficient_credits", message, required=credits, balance=available)
            return state.create_job(upload.id, markers, model, credits)

    @api.get("/markers")
    def markers() -> dict[str, Any]:
        options = state.options
        entitled = options.entitled()
        return {
            "markers": [
                {"name": m, "publicPanel": m in options.public_panel}
                for m in options.catalog
                if m in entitled
            ],
            "fullPanel": entitled >= frozenset(options.catalog),
        }

    @api.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).to_wire()

    @api.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict[str, Any]:
        with state.lock:
            job = job_or_404(job_id)
            if job.terminal:
                raise ApiError(400, "job_terminal", f"Job {job_id} is already {job.status}")
            state.cancel(job)
            return job.to_wire()

    @api.get("/samples/{upload_id}")
    def sample(upload_id: str) -> dict[str, Any]:
        upload = upload_or_404(upload_id)
        jobs = [job.to_wire() for job in state.jobs_for_upload(upload_id)]
        return {
            **upload.to_wire(),
            "ownership": "mine",
            "appUrl": f"https://app.strandai.invalid/samples/{upload.id}",
            "name": None,
            "mpp": None,
            "fields": {},
            "expiresAt": None,
            "expiresAtSource": None,
            "expiresInDays": None,
            "willExpire": False,
            "trashedAt": None,
            "jobs": jobs,
            "jobCount": len(jobs),
            "segmentation": {"status": "not_started", "retryable": False, "creditCost": 0},
        }

    @api.get("/jobs/{job_id}/stream")
    async def stream(job_id: str) -> StreamingResponse:
        job_or_404(job_id)
        with state.lock:
            state.stats.sse_connections += 1
        drop = faults.take_sse_drop()
        return StreamingResponse(
            _events(job_id, drop.after_events if drop else None, drop.abrupt if drop else False),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(job_id: str, drop_after: int | None, abrupt: bool) -> AsyncIterator[str]:
        """A snapshot whenever the job changes, a heartbeat comment when quiet; ends at a terminal status."""
        loop = asyncio.get_running_loop()
        last: dict[str, Any] | None = None
        sent = 0
        beat = loop.time()
        while not closing.is_set():
            snapshot = state.job_wire(job_id)
            if snapshot is None:
                return
            if snapshot != last:
                if drop_after is not None and sent >= drop_after:
                    if abrupt:
                        raise SseDropped(job_id)
                    return
                yield f"data: {json.dumps(snapshot)}\n\n"
                sent, last = sent + 1, snapshot
                if snapshot["status"] in ("completed", "partial_failed", "failed", "cancelled"):
                    return
            if loop.time() - beat >= state.options.heartbeat_interval:
                yield ": heartbeat\n\n"
                beat = loop.time()
            await asyncio.sleep(state.options.sse_tick)

    @api.get("/jobs/{job_id}/results")
    def result_location(job_id: str, request: Request) -> dict[str, Any]:
        job = finished_job(job_id)
        expires = datetime.now(UTC) + timedelta(hours=1)
        base = str(request.base_url).rstrip("/")
        return {
            "resultUrl": f"{base}/gcs/results/{job.id}/zarr.json?X-Goog-Expires=3600&X-Goog-Signature=fake",
            "resultBasePath": f"results/{job.id}/",
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
        }

    @api.get("/jobs/{job_id}/results/files/{path:path}")
    def result_file(job_id: str, path: str, request: Request) -> Response:
        job = finished_job(job_id)
        data = results.get(job, state.upload(job.upload_id)).files.get(path)
        if data is None:
            raise ApiError(404, "file_not_found", f"No result file {path}")
        media_type = "application/json" if path.endswith("zarr.json") else "application/octet-stream"
        return _bytes(data, request.headers.get("range"), media_type)

    # What `resultUrl` points at: the store as a signed GCS URL serves it, without the API key.
    app.add_api_route("/gcs/results/{job_id}/{path:path}", result_file, methods=["GET"])
    app.include_router(api)
    app.add_route("/gcs/upload/{token}", ResumableEndpoint(state, faults).handle, methods=["PUT"])
    return FaultMiddleware(app, faults)


def _rejection(status: int, retry_after: float | None) -> ApiError:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    code = "rate_limited" if status == 429 else "internal_error"
    return ApiError(status, code, f"Submit rejected with HTTP {status} (fault injection)", headers=headers)


def _bytes(data: bytes, range_header: str | None, media_type: str) -> Response:
    """The object, or one `bytes=` range of it (zarr reads shard indexes by range)."""
    if range_header is None or "," in range_header or not range_header.startswith("bytes="):
        return Response(data, media_type=media_type)
    first, _, last = range_header.removeprefix("bytes=").partition("-")
    size = len(data)
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if last == "" else min(size, int(last) + 1)
    if start >= end:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers = {"Content-Range": f"bytes {start}-{end - 1}/{size}"}
    return Response(data[start:end], status_code=206, media_type=media_type, headers=headers)
