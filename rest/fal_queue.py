"""fal's queue and streaming, served so that `fal_client` works against this server with only
its two host constants changed (`RUN_URL_FORMAT`, `QUEUE_URL_FORMAT`):

- `POST /queue/fal-ai/{app}` for every app of `fal_api.ROUTES`: validated as the sync route
  validates, then kept as a job in the durable store (`pipelines/jobs/`); answers with the
  request's id and its status, result and cancel URLs.
- `GET /queue/fal-ai/{alias}/requests/{id}/status` (`?logs=1`), `.../status/stream` (SSE),
  `GET .../requests/{id}` (the result: the sync route's response) and `PUT .../cancel`.
- `POST /fal-ai/{app}/stream`: server-sent events, each live preview and then the result; the
  generation is cancelled if the client goes away first.

As on fal, the status, result and cancel URLs name the owner and the app's alias only:
`fal-ai/flux/dev/image-to-image` is polled at `/queue/fal-ai/flux/requests/{id}/status`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError, ServerBusy
from pipelines.jobs.runner import JobRunner, StepEvent
from pipelines.jobs.store import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, JobRecord
from rest.arrival import arrival_time
from rest.common import JOB_POLL_SECONDS, RestSettings, data_uri, drop_none, event_stream, public_base, sse
from rest.fal_api import APP_OWNER, ROUTES, FalBody, app_id, fal_error, fal_response, field_errors, parse_body

API = "fal"


class FalState(NamedTuple):
    status: str  # the status route's word
    error_type: str | None  # fal's error type, for a request that ended without a result
    result_status: int  # the result route's HTTP status
    detail: str | None  # the result route's detail where the job has no error of its own


# The store's states in fal's words. fal's clients poll until COMPLETED, so a failed or
# cancelled request is COMPLETED too, with an error and its type.
FAL_STATES = {
    QUEUED: FalState("IN_QUEUE", None, 400, "The request is still in the queue; poll its status_url until COMPLETED"),
    RUNNING: FalState("IN_PROGRESS", None, 400, "The request is still in progress; poll its status_url until "
                                                "COMPLETED"),
    COMPLETED: FalState("COMPLETED", None, 200, None),
    FAILED: FalState("COMPLETED", "runner_server_error", 500, "The request failed"),
    CANCELLED: FalState("COMPLETED", "client_cancelled", 499, "The request was cancelled"),
}


def app_alias(app: str) -> str:
    """The part of an app id the queue's request URLs keep: "fal-ai/flux/dev/redux" -> "flux"."""
    return app.split("/")[1]


def step_log(step: StepEvent, num_images: int) -> dict[str, Any]:
    """A denoising step as one of fal's log lines."""
    return {"message": f"image {step.image_index + 1} of {num_images} · step {step.step} of {step.steps}",
            "level": "INFO", "source": "USER",
            "timestamp": datetime.fromtimestamp(step.at, UTC).isoformat()}


def metrics(record: JobRecord) -> dict[str, float]:
    """fal's metrics: the seconds the request ran, once it ran."""
    if record.started_at is None or record.finished_at is None:
        return {}
    return {"inference_time": round(record.finished_at - record.started_at, 3)}


def preview_event(step: StepEvent) -> dict[str, Any]:
    """A live preview as a stream event: fal's images, a small JPEG of the image being denoised."""
    width, height = step.preview_size
    return {"images": [{"url": data_uri(step.preview, "image/jpeg"), "width": width, "height": height,
                        "content_type": "image/jpeg"}],
            "image_index": step.image_index, "step": step.step, "steps": step.steps}


def create_router(playground, settings: RestSettings, jobs: JobRunner) -> APIRouter:
    router = APIRouter(tags=["fal-style queue and streaming"])
    requests_path = f"/queue/{APP_OWNER}/{{alias}}/requests/{{request_id}}"

    # -- taking requests ---------------------------------------------------------------------

    async def submit(path: str, body: FalBody, http: Request, extra: dict[str, Any]) -> JobRecord | JSONResponse:
        """Validate (422 before anything is queued) and queue a job (503 when the line is full)."""
        try:
            raw, request = await run_in_threadpool(parse_body, playground, settings, path, body)
            # What answering needs later: how to hand out its images, how many there are.
            options = {"sync_mode": body.sync_mode, "num_images": request.num_images, **extra}
            return await run_in_threadpool(jobs.submit, API, app_id(path), raw, request, options,
                                           arrival_time(http.scope))
        except FieldError as error:
            return field_errors(error)
        except ServerBusy as error:
            return fal_error("body", str(error), status=503)

    def request_url(record: JobRecord, http: Request) -> str:
        return f"{public_base(http, settings)}/queue/{APP_OWNER}/{app_alias(record.route)}/requests/{record.id}"

    def add_app(path: str) -> None:
        async def enqueue(body: FalBody, http: Request):
            record = await submit(path, body, http, {})
            if isinstance(record, JSONResponse):
                return record
            url = request_url(record, http)
            return {"status": "IN_QUEUE", "request_id": record.id, "response_url": url, "status_url": f"{url}/status",
                    "cancel_url": f"{url}/cancel", "queue_position": jobs.position(record.id) or 0}

        async def stream(body: FalBody, http: Request):
            record = await submit(path, body, http, {"previews": True})
            if isinstance(record, JSONResponse):
                return record
            # The task runs however the stream ends, the client leaving included: a job still
            # going is cancelled (once it finished, cancelling does nothing).
            return event_stream(stream_events(record, http), background=BackgroundTask(jobs.cancel, record.id))

        enqueue.__doc__ = f"Queue a request to {app_id(path)}; poll its status_url, then fetch its response_url."
        stream.__doc__ = f"Run a request to {app_id(path)}, streaming its live previews and then its result (SSE)."
        name = path.replace("/", "_")
        router.add_api_route(f"/queue/{APP_OWNER}{path}", enqueue, methods=["POST"], name=f"fal_queue{name}")
        router.add_api_route(f"/{APP_OWNER}{path}/stream", stream, methods=["POST"], name=f"fal_stream{name}")

    # -- answering ---------------------------------------------------------------------------

    def find(alias: str, request_id: str) -> JobRecord | None:
        record = jobs.get(request_id)
        if record is None or record.api != API or app_alias(record.route) != alias:
            return None
        return record

    def not_found(alias: str, request_id: str) -> JSONResponse:
        return JSONResponse(status_code=404, content={
            "detail": f"No request {request_id!r} for {APP_OWNER}/{alias} (finished requests are kept for the "
                      "result retention)"})

    def error_text(record: JobRecord) -> str:
        return record.error or FAL_STATES[record.status].detail

    def status_body(record: JobRecord, with_logs: bool, http: Request) -> dict[str, Any]:
        state = FAL_STATES[record.status]
        body = {"status": state.status, "request_id": record.id, "response_url": request_url(record, http),
                "logs": logs_of(record) if with_logs else None}
        if state.status == "IN_QUEUE":
            body["queue_position"] = jobs.position(record.id) or 0
        if state.status == "COMPLETED":
            body["metrics"] = metrics(record)
        if state.error_type is not None:
            body.update(error=error_text(record), error_type=state.error_type)
        return body

    def logs_of(record: JobRecord) -> list[dict[str, Any]]:
        """Its steps so far, while the server still has them in memory (not after a restart)."""
        live = jobs.live(record.id)
        return [step_log(step, record.options.get("num_images", 1)) for step in (live.steps if live else [])]

    def outcome(record: JobRecord, http: Request) -> dict[str, Any]:
        """A finished job's answer: the sync route's response, or fal's error body with its type."""
        if record.status == COMPLETED:
            return fal_response(record.result, record.options.get("sync_mode", False), http, settings,
                                playground.store)
        return drop_none({"detail": error_text(record), "error_type": FAL_STATES[record.status].error_type})

    async def status_events(alias: str, request_id: str, with_logs: bool, http: Request) -> AsyncIterator[str]:
        """The request's status each time it changes, until COMPLETED."""
        sent = None
        while (record := await run_in_threadpool(find, alias, request_id)) is not None:
            body = status_body(record, with_logs, http)
            if body != sent:
                yield sse(body)
                sent = body
            if body["status"] == "COMPLETED":
                return
            await asyncio.sleep(JOB_POLL_SECONDS)

    async def stream_events(record: JobRecord, http: Request) -> AsyncIterator[str]:
        """Each live preview of the job as it comes, then its outcome: the sync response, or
        fal's error body."""
        live, seen = jobs.live(record.id), 0
        while True:
            finished = live.done.is_set()  # read before the steps, so that none is missed
            steps = live.steps[seen:]
            seen += len(steps)
            for step in steps:
                if step.preview is not None:
                    yield sse(preview_event(step))
            if finished:
                break
            await asyncio.sleep(JOB_POLL_SECONDS)
        yield sse(outcome(jobs.get(record.id), http))

    # -- routes ------------------------------------------------------------------------------

    for path in ROUTES:
        add_app(path)

    @router.get(f"{requests_path}/status")
    def status(alias: str, request_id: str, http: Request, logs: bool = False):
        """IN_QUEUE (with queue_position), IN_PROGRESS or COMPLETED (with metrics, and error and
        error_type where it failed or was cancelled); `logs=1` adds a log line per step."""
        record = find(alias, request_id)
        if record is None:
            return not_found(alias, request_id)
        body = status_body(record, logs, http)
        return JSONResponse(status_code=200 if body["status"] == "COMPLETED" else 202, content=body)

    @router.get(f"{requests_path}/status/stream")
    def status_stream(alias: str, request_id: str, http: Request, logs: bool = False):
        """The status as server-sent events, one each time it changes, until COMPLETED."""
        if find(alias, request_id) is None:
            return not_found(alias, request_id)
        return event_stream(status_events(alias, request_id, logs, http))

    @router.get(requests_path)
    def result(alias: str, request_id: str, http: Request):
        """The request's response, as the sync route answers; 400 while it is not done."""
        record = find(alias, request_id)
        if record is None:
            return not_found(alias, request_id)
        state = FAL_STATES[record.status]
        headers = {"X-Fal-Error-Type": state.error_type} if state.error_type else None
        return JSONResponse(outcome(record, http), status_code=state.result_status, headers=headers)

    @router.put(f"{requests_path}/cancel")
    def cancel(alias: str, request_id: str):
        """Cancel a queued request at once, a running one at its next denoising step."""
        record = find(alias, request_id)
        if record is None:
            return not_found(alias, request_id)
        if record.finished:
            return JSONResponse(status_code=400, content={"status": "ALREADY_COMPLETED"})
        jobs.cancel(request_id)
        return JSONResponse(status_code=202, content={"status": "CANCELLATION_REQUESTED"})

    @router.post(f"/queue/{APP_OWNER}/{{app:path}}")
    @router.post(f"/{APP_OWNER}/{{app:path}}")
    def unknown_app(app: str):
        """Registered last: every app this server does not serve."""
        served = ", ".join(app_id(path) for path in ROUTES)
        return JSONResponse(status_code=404, content={
            "detail": f"Application {APP_OWNER}/{app} is not served here; these are: {served}"})

    return router
