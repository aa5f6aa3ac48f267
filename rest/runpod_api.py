"""RunPod-style endpoints: `POST /v2/{model}/runsync`, `/run`, `GET /v2/{model}/status/{id}`,
`/stream/{id}`, `/health`, `POST /v2/{model}/cancel/{id}` and `/purge-queue`, with the `input`
objects of RunPod's Flux Dev and Flux Kontext Dev public endpoints and their defaults (guidance
7.5 and jpeg for dev; 2 and png for Kontext). Every job, `/runsync`'s too, is kept in the
durable job store (`pipelines/jobs/`) and survives a restart.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError, ServerBusy
from pipelines.jobs.runner import JobRunner, StepEvent
from pipelines.jobs.store import JobRecord
from rest.arrival import arrival_time
from rest.common import (
    MODEL_MODES,
    RestSettings,
    UnknownModel,
    data_uri,
    drop_none,
    first_error,
    public_base,
    resolve_model,
    result_url_at,
    wait_for_job,
)
from rest.inputs import load_image_input

# Our field names in RunPod's vocabulary, for error messages.
FIELD_NAMES = {"guidance_scale": "guidance", "output_format": "image_format", "image_size": "size"}
KONTEXT_FIELD_NAMES = {**FIELD_NAMES, "output_format": "output_format", "width": "size", "height": "size"}
# The store's states in RunPod's words.
STATUS_WORDS = {"queued": "IN_QUEUE", "running": "IN_PROGRESS", "completed": "COMPLETED", "failed": "FAILED",
                "cancelled": "CANCELLED"}
# How long `/runsync` waits before it answers with the job's id instead (RunPod: 90 s, ?wait= up to 300 s).
RUNSYNC_WAIT_MS, RUNSYNC_WAIT_MS_MAX = 90_000, 300_000
# RunPod's documented defaults where they differ from the playground's.
DEFAULTS = {
    "dev": {"guidance": 7.5, "image_format": "jpeg", "width": 1024, "height": 1024},
    "kontext": {"guidance": 2.0, "output_format": "png", "size": "1024*1024"},
    "redux": {"guidance": 2.5, "output_format": "png"},
}


class RunBody(BaseModel):
    """RunPod's request: every parameter inside `input`."""

    model_config = ConfigDict(extra="allow")
    input: dict[str, Any]


def parse_star_size(size: Any) -> tuple[Any, Any]:
    """RunPod Kontext's "W*H"."""
    parts = str(size).split("*")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise FieldError("size", f'size must be "width*height", e.g. "1024*1024"; got {size!r}')
    return int(parts[0]), int(parts[1])


def raw_fields(model: str, values: dict[str, Any], settings: RestSettings) -> dict[str, Any]:
    """RunPod's `input` mapped onto our fields, with RunPod's defaults."""
    values = {**DEFAULTS[model], **drop_none(values)}
    raw = {
        "prompt": values.get("prompt"), "negative_prompt": values.get("negative_prompt"),
        "num_inference_steps": values.get("num_inference_steps"), "guidance_scale": values.get("guidance"),
        "seed": values.get("seed"), "true_cfg_scale": values.get("true_cfg_scale"),
        "output_format": values.get("image_format", values.get("output_format")),
        "enable_safety_checker": values.get("enable_safety_checker"), "image_size": "custom",
    }
    if "size" in values:
        raw["width"], raw["height"] = parse_star_size(values["size"])
    else:
        raw["width"], raw["height"] = values.get("width"), values.get("height")
    if model != "dev":
        raw["image"] = load_image_input(values.get("image"), "image", settings.fetch)
        if "size" not in values and values.get("width") is None:
            raw["image_size"] = "match_input"
    return raw


def render_output(summary: dict[str, Any], base: str) -> dict[str, Any]:
    """RunPod's `output`: the image URL and a cost, which is 0 on your own hardware."""
    return {"image_url": result_url_at(base, summary["images"][0]["result_id"]), "cost": 0.0,
            "seed": summary["seed"], "has_nsfw_concepts": [image["has_nsfw_concepts"] for image in summary["images"]],
            "warnings": summary["warnings"]}


def preview_chunk(step: StepEvent) -> dict[str, Any]:
    """A live preview as a stream chunk's `output`: a small JPEG of the image being denoised."""
    return {"output": {"preview": True, "image_url": data_uri(step.preview, "image/jpeg"),
                       "image_index": step.image_index, "step": step.step, "steps": step.steps}}


def timings_ms(record: JobRecord) -> dict[str, int]:
    """RunPod's delayTime (waiting) and executionTime (running), in milliseconds."""
    now = time.time()
    started = record.started_at or record.finished_at or now
    finished = record.finished_at or now
    return {"delayTime": round((started - record.created_at) * 1000),
            "executionTime": round((finished - started) * 1000) if record.started_at else 0}


def failed(status: int, message: str, job_id: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"id": job_id or f"sync-{uuid.uuid4()}", "status": "FAILED",
                                                     "error": message})


def create_router(playground, settings: RestSettings, jobs: JobRunner) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["RunPod-style endpoints"])
    delivered: dict[str, int] = {}  # stream chunks each job has handed out

    def prepare(model_name: str, body: RunBody):
        """(model, raw fields, validated request) or a FAILED response."""
        try:
            model = resolve_model(model_name)
            raw = raw_fields(model, body.input, settings)
            return model, raw, playground.parse(MODEL_MODES[model], raw)
        except UnknownModel as error:
            return failed(404, str(error))
        except FieldError as error:  # an input RunPod names itself (size, image), or a parsed field
            names = FIELD_NAMES if model == "dev" else KONTEXT_FIELD_NAMES
            return failed(400, f"Invalid parameter: {first_error(error, names)[1]}")

    def submit(model_name: str, body: RunBody, http: Request, id_prefix: str = ""):
        prepared = prepare(model_name, body)
        if isinstance(prepared, JSONResponse):
            return prepared
        model, raw, request = prepared
        try:
            return jobs.submit("runpod", model, raw, request, {"previews": True}, arrival_time(http.scope),
                               id_prefix=id_prefix)
        except ServerBusy as error:
            return failed(503, str(error))

    def job_state(model_name: str, job_id: str, http: Request) -> dict[str, Any] | JSONResponse:
        record = jobs.get(job_id)
        if record is None or record.api != "runpod" or record.route != known_model(model_name):
            return JSONResponse(status_code=404, content={
                "id": job_id, "status": "NOT_FOUND",
                "error": f"No job {job_id!r} on endpoint {model_name!r} (finished jobs are kept for the result "
                         "retention)"})
        state = {"id": record.id, "status": STATUS_WORDS[record.status], **timings_ms(record), "workerId": "local"}
        if record.status == "completed":
            state["output"] = render_output(record.result, public_base(http, settings))
        if record.error is not None:
            state["error"] = record.error
        return state

    @router.post("/{model}/runsync")
    async def run_sync(model: str, body: RunBody, http: Request, wait: int = RUNSYNC_WAIT_MS):
        """Run a request and answer when it is done, or after `wait` ms with its id (IN_QUEUE or
        IN_PROGRESS; poll `/status/{id}`), as RunPod does."""
        record = await run_in_threadpool(submit, model, body, http, "sync-")
        if isinstance(record, JSONResponse):
            return record
        await wait_for_job(jobs, record.id, min(max(wait, 1000), RUNSYNC_WAIT_MS_MAX) / 1000)
        state = job_state(model, record.id, http)
        # A failure as an HTTP error too, so that the SDK's run_sync raises it rather than return None.
        return JSONResponse(status_code=500, content=state) if state["status"] == "FAILED" else state

    @router.post("/{model}/run")
    async def run_async(model: str, body: RunBody, http: Request):
        """Queue a request; poll `/status/{id}` for its result, or `/stream/{id}` for its previews."""
        record = await run_in_threadpool(submit, model, body, http)
        if isinstance(record, JSONResponse):
            return record
        return {"id": record.id, "status": STATUS_WORDS[record.status]}

    @router.get("/{model}/status/{job_id}")
    def status(model: str, job_id: str, http: Request):
        """A job's status, and its output once COMPLETED."""
        return job_state(model, job_id, http)

    @router.get("/{model}/stream/{job_id}")
    def stream(model: str, job_id: str, http: Request):
        """What the job produced since the last call: each live preview as an `output`, then
        the result. A cancelled job ends as FAILED here: RunPod's SDK stops streaming only at
        COMPLETED, FAILED or TIMED_OUT."""
        state = job_state(model, job_id, http)
        if isinstance(state, JSONResponse):
            return state
        live = jobs.live(job_id)
        chunks = [preview_chunk(step) for step in (live.steps if live else []) if step.preview is not None]
        if state["status"] == "COMPLETED":
            chunks.append({"output": state["output"]})
        elif state["status"] == "CANCELLED":
            state.update(status="FAILED", error="The job was cancelled.")
        start = delivered.get(job_id, 0)
        delivered[job_id] = len(chunks)
        return {"id": state["id"], "status": state["status"], "stream": chunks[start:],
                **({"error": state["error"]} if "error" in state else {})}

    @router.post("/{model}/cancel/{job_id}")
    def cancel(model: str, job_id: str, http: Request):
        """Cancel a queued job, or a running one at its next denoising step."""
        state = job_state(model, job_id, http)
        if isinstance(state, JSONResponse):
            return state
        jobs.cancel(job_id)
        return job_state(model, job_id, http)

    @router.get("/{model}/health")
    def health(model: str):
        """The endpoint's jobs by state, and its workers (the accelerator, or Ray Serve's
        workers), idle or running."""
        route = known_model(model)
        if route is None:
            return unknown_endpoint(model)
        counts, line = jobs.store.counts("runpod", route), playground.queue.counts()
        idle = playground.queue.max_running - line["running"]
        return {"jobs": {"completed": counts["completed"], "failed": counts["failed"] + counts["cancelled"],
                         "inProgress": counts["running"], "inQueue": counts["queued"], "retried": counts["retried"]},
                "workers": {"idle": idle, "running": line["running"], "ready": idle,
                            "initializing": 0, "throttled": 0, "unhealthy": 0}}

    @router.post("/{model}/purge-queue")
    def purge_queue(model: str):
        """Cancel every job of the endpoint still waiting; running jobs go on."""
        route = known_model(model)
        if route is None:
            return unknown_endpoint(model)
        return {"removed": jobs.purge("runpod", route), "status": "completed"}

    def known_model(model_name: str) -> str | None:
        try:
            return resolve_model(model_name)
        except UnknownModel:
            return None

    def unknown_endpoint(model_name: str) -> JSONResponse:
        return failed(404, str(UnknownModel(model_name)))

    return router
