"""RunPod-style endpoints: `POST /v2/{model}/runsync`, `/run`, `GET /v2/{model}/status/{id}`,
`POST /v2/{model}/cancel/{id}`, with the `input` objects of RunPod's Flux Dev and Flux Kontext
Dev public endpoints and their defaults (guidance 7.5 and jpeg for dev; 2 and png for Kontext).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError
from pipelines.service import (
    GenerationError,
    GenerationResult,
    ServerBusy,
)
from rest.arrival import arrival_time
from rest.common import (
    MODEL_MODES,
    RestSettings,
    UnknownModel,
    drop_none,
    first_error,
    resolve_model,
)
from rest.inputs import load_image_input
from rest.jobs import JobQueue

# Our field names in RunPod's vocabulary, for error messages.
FIELD_NAMES = {"guidance_scale": "guidance", "output_format": "image_format", "image_size": "size"}
KONTEXT_FIELD_NAMES = {**FIELD_NAMES, "output_format": "output_format", "width": "size", "height": "size"}
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


def render_output(result: GenerationResult, base_url: str) -> dict[str, Any]:
    """RunPod's `output`: the image URL and a cost, which is 0 on your own hardware."""
    return {"image_url": f"{base_url.rstrip('/')}/results/{result.images[0].result_id}", "cost": 0.0,
            "seed": result.request.seed, "has_nsfw_concepts": result.has_nsfw_concepts,
            "warnings": result.info["warnings"]}


def failed(status: int, message: str, job_id: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"id": job_id or f"sync-{uuid.uuid4()}", "status": "FAILED",
                                                     "error": message})


def create_router(playground, settings: RestSettings) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["RunPod-style endpoints"])
    jobs = JobQueue(playground)

    def prepare(model_name: str, body: RunBody):
        """(model, validated request) or a FAILED response."""
        try:
            model = resolve_model(model_name)
            raw = raw_fields(model, body.input, settings)
            return model, playground.parse(MODEL_MODES[model], raw)
        except UnknownModel as error:
            return failed(404, str(error))
        except FieldError as error:  # an input RunPod names itself (size, image), or a parsed field
            names = FIELD_NAMES if model == "dev" else KONTEXT_FIELD_NAMES
            return failed(400, f"Invalid parameter: {first_error(error, names)[1]}")

    def base_url(http: Request) -> str:
        return settings.public_url or str(http.base_url)

    @router.post("/{model}/runsync")
    async def run_sync(model: str, body: RunBody, http: Request):
        """Run a request and answer when it is done."""
        prepared = prepare(model, body)
        if isinstance(prepared, JSONResponse):
            return prepared
        _, request = prepared
        job_id = f"sync-{uuid.uuid4()}"
        try:
            result = await run_in_threadpool(playground.execute, request, arrival_time(http.scope))
        except ServerBusy as error:
            return failed(503, str(error), job_id)
        except GenerationError as error:
            return failed(500, str(error), job_id)
        return {"id": job_id, "status": "COMPLETED", "delayTime": result.queued_ms,
                "executionTime": result.executed_ms, "workerId": "local",
                "output": render_output(result, base_url(http))}

    @router.post("/{model}/run")
    async def run_async(model: str, body: RunBody, http: Request):
        """Queue a request; poll `/status/{id}` for its result."""
        prepared = prepare(model, body)
        if isinstance(prepared, JSONResponse):
            return prepared
        url = base_url(http)
        if jobs.waiting() >= playground.max_waiting:
            return failed(503, str(ServerBusy(jobs.waiting())))
        job = jobs.submit(prepared[1], lambda result: render_output(result, url), arrival_time(http.scope))
        return {"id": job.id, "status": job.status}

    def job_state(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return JSONResponse(status_code=404, content={"id": job_id, "status": "NOT_FOUND",
                                                          "error": f"No job {job_id!r} (jobs are kept for a day)"})
        state = {"id": job.id, "status": job.status, **job.timings_ms(), "workerId": "local"}
        if job.output is not None:
            state["output"] = job.output
        if job.error is not None:
            state["error"] = job.error
        return state

    @router.get("/{model}/status/{job_id}")
    def status(model: str, job_id: str):
        """A job's status, and its output once COMPLETED."""
        return job_state(job_id)

    @router.post("/{model}/cancel/{job_id}")
    def cancel(model: str, job_id: str):
        """Cancel a queued job, or a running one at its next denoising step."""
        jobs.cancel(job_id)
        return job_state(job_id)

    return router
