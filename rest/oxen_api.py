"""Oxen.ai's image API: `POST /api/ai/images/generate` (FLUX.1 [dev]) and `/api/ai/images/edit`
(FLUX.1 Kontext [dev], `input_image`), answering `{model, created, images: [{url} | {b64_json}]}`;
the async queue, `POST /api/ai/queue` (`num_generations` 1-4: seeds seed, seed+1, ...),
`GET /api/ai/queue[/{id}]` and `DELETE /api/ai/queue/{id}`; completion events at `GET /api/events`
(SSE); and `GET /api/ai/models[/{id}]`, each model with its `json_request_schema`. The fields,
defaults and ranges are declared once, in rest/oxen_schema.py.

Queued generations are kept in the durable job store (`pipelines/jobs/`, api "oxen") and survive
a restart. Oxen checks a queued generation's parameters only when it runs; here every field is
checked before anything is queued, and a refusal names the field and what it accepts.

Output sizes: flux-1-dev renders `aspect_ratio` at about 1 megapixel (`optimize_for_quality`)
or 0.33 megapixels (`optimize_for_speed`); flux-kontext-dev at the trained Kontext resolution
nearest the ratio, or following the input image (`match_input_image`):

| `aspect_ratio` | flux-1-dev `optimize_for_quality` | flux-1-dev `optimize_for_speed` | flux-kontext-dev |
|---|---|---|---|
| 1:1 | 1024×1024 | 576×576 | 1024×1024 |
| 16:9 | 1360×768 | 768×432 | 1392×752 |
| 9:16 | 768×1360 | 432×768 | 752×1392 |
| 4:3 | 1168×880 | 656×496 | 1184×880 |
| 3:4 | 880×1168 | 496×656 | 880×1184 |
| 3:2 | 1248×832 | 704×464 | 1248×832 |
| 2:3 | 832×1248 | 464×704 | 832×1248 |
| 21:9 | — | — | 1568×672 |
| 4:5 | — | — | 944×1104 |
| 5:4 | — | — | 1104×944 |
| 9:21 | — | — | 672×1568 |
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError, GenerationError, ServerBusy
from pipelines.jobs.runner import JobRunner
from pipelines.jobs.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStore,
)
from pipelines.service import GenerationResult
from rest.arrival import arrival_time
from rest.common import (
    RestSettings,
    all_errors_message,
    first_error,
    result_url,
    run_request,
)
from rest.inputs import load_image_input
from rest.oxen_schema import (
    MODELS,
    NUM_GENERATIONS,
    RESPONSE_FORMAT,
    ModelNotFound,
    OxenField,
    OxenModel,
    endpoint_value,
    model_object,
    oxen_model,
    playground_fields,
)

API = "oxen"
# The store's states in Oxen's words.
STATUS_WORDS = {QUEUED: "queued", RUNNING: "processing", COMPLETED: "succeeded", FAILED: "failed",
                CANCELLED: "cancelled"}
STORE_STATUSES = {word: status for status, word in STATUS_WORDS.items()}
STATUS_FILTER = OxenField("status", "string", "Only generations in this state", choices=tuple(STORE_STATUSES))
LIST_LIMIT = 100  # generations a list answers with, newest first
# Each Oxen error's type and title, by HTTP status.
ERROR_KINDS = {400: ("bad_request", "Invalid request"), 401: ("unauthenticated", "A valid API key is required"),
               404: ("resource_not_found", "The requested resource could not be found"),
               500: ("generation_failed", "The generation failed"), 503: ("server_busy", "The server is busy")}
COMPLETION_EVENT = "media_generation_completed"
KEEP_ALIVE = ": keep-alive\n\n"
KEEP_ALIVE_SECONDS = 15  # as Oxen's stream, when idle
EVENT_POLL_SECONDS = 0.25
# A job's end is stamped just before it is written: a stream looks this far back for late writes.
LOOK_BACK_SECONDS = 30
# What a request may meet before it runs; each becomes an Oxen error.
REFUSED = (ModelNotFound, FieldError, GenerationError)


class OxenBody(BaseModel):
    """Oxen's request: `model` and the model's own fields (GET /api/ai/models/{model})."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(description="flux-1-dev or flux-kontext-dev, or their hub ids")


def oxen_error(status: int, message: str, field: str | None = None) -> JSONResponse:
    kind, title = ERROR_KINDS.get(status, ("error", "Error"))
    error = {"type": kind, "title": title, "message": message, **({"field": field} if field else {})}
    return JSONResponse(status_code=status, content={"error": error, "status": "error", "status_message": kind})


def refusal(error: Exception, model: OxenModel | None) -> JSONResponse:
    """An unknown model (404), a bad field (400, named in Oxen's words), a full line (503) or a
    failed generation (500)."""
    if isinstance(error, ModelNotFound):
        return oxen_error(404, str(error), "model")
    if isinstance(error, FieldError):
        names = model.field_names if model else {}
        return oxen_error(400, all_errors_message(error, names), first_error(error, names)[0])
    return oxen_error(503 if isinstance(error, ServerBusy) else 500, str(error))


def unix(moment: float | None) -> int | None:
    return int(moment) if moment is not None else None


def submitted_params(values: dict[str, Any]) -> dict[str, Any]:
    """What a generation lists of its request; a data URI is left out (it is the whole image)."""
    return {name: value for name, value in values.items() if name not in ("model", NUM_GENERATIONS.name)
            and value is not None and not (isinstance(value, str) and value.startswith("data:"))}


def generation_seeds(seed: int | None, count: int) -> list[int | None]:
    """seed, seed+1, ... for `count` generations; without a seed, each draws its own."""
    if seed is None or seed < 0:
        return [None] * count
    return [seed + index for index in range(count)]


class CompletionWatch:
    """The API's jobs that finish from now on, each handed out once."""

    def __init__(self, store: JobStore):
        self.store = store
        self.since = time.time()
        self.seen: dict[str, float] = {}  # job id -> when it finished

    def new(self) -> list[JobRecord]:
        fresh = [record for record in self.store.finished_since(API, self.since) if record.id not in self.seen]
        self.seen.update((record.id, record.finished_at) for record in fresh)
        self.since = max(self.since, time.time() - LOOK_BACK_SECONDS)
        self.seen = {job_id: at for job_id, at in self.seen.items() if at >= self.since}
        return fresh


def create_router(playground, settings: RestSettings, jobs: JobRunner) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["Oxen.ai-style endpoints"])

    def first_image_url(record: JobRecord, http: Request) -> str | None:
        if record.status != COMPLETED:
            return None
        return result_url(http, settings, record.result["images"][0]["result_id"])

    def generation(record: JobRecord, http: Request) -> dict[str, Any]:
        """Oxen's generation: its state, timings, result URL or error, and the parameters it was sent."""
        state = {"generation_id": record.id, "model_name": record.options["model"],
                 "prompt": record.request.get("prompt"), "media_type": "image", "status": STATUS_WORDS[record.status],
                 "result_url": first_image_url(record, http), "error_message": record.error,
                 "enqueued_at": unix(record.created_at), "started_at": unix(record.started_at),
                 "completed_at": unix(record.finished_at)}
        sent = {**record.options["params"], "seed": record.request.get("seed")}  # the seed as it was drawn
        return {**state, **{name: value for name, value in sent.items() if name not in state}}

    def oxen_record(generation_id: str) -> JobRecord | JSONResponse:
        record = jobs.get(generation_id)
        if record is None or record.api != API:
            return oxen_error(404, f"No generation {generation_id!r} (finished ones are kept for the result "
                                   "retention)")
        return record

    def playground_raw(model: OxenModel, values: dict[str, Any]) -> dict[str, Any]:
        """The playground's raw fields, the input image fetched (off the event loop: it may download)."""
        raw = playground_fields(model, values)
        if model.takes_image:
            raw["image"] = load_image_input(raw.get("image"), "input_image", settings.fetch)
        return raw

    def parsed_generations(model: OxenModel, values: dict[str, Any], count: int) -> list[tuple[dict, Any]]:
        """Each generation's raw fields and validated request; FieldError before any is queued."""
        if values.get("n") not in (None, 1):
            raise FieldError("n", f"n must be 1 here: a queued generation makes one image; ask for "
                                  f"{NUM_GENERATIONS.name} (1 to 4) instead")
        raw = playground_raw(model, values)
        generations = [{**raw, "seed": seed} for seed in generation_seeds(raw.get("seed"), count)]
        return [(each, playground.parse(model.mode, each)) for each in generations]

    def submit_all(model: OxenModel, values: dict[str, Any], parsed: list, received_at: float) -> list[JobRecord]:
        """Queue every generation, or none: a full line cancels those already taken."""
        options = {"model": model.id, "params": submitted_params(values)}
        records: list[JobRecord] = []
        try:
            for raw, request in parsed:
                records.append(jobs.submit(API, model.key, raw, request, options, received_at))
        except ServerBusy:
            for record in records:
                jobs.cancel(record.id)
            raise
        return records

    def images_response(model: OxenModel, result: GenerationResult, response_format: str, http: Request) -> dict:
        def item(image) -> dict[str, str]:
            if response_format == "b64_json":
                return {"b64_json": base64.b64encode(image.file.read_bytes()).decode()}
            return {"url": result_url(http, settings, image.result_id)}

        return {"model": model.id, "created": int(time.time()), "images": [item(image) for image in result.images]}

    async def run_sync(endpoint: str, body: OxenBody, http: Request):
        values, model = body.model_dump(), None
        try:
            model = oxen_model(body.model)
            if model.endpoint != endpoint:
                raise FieldError("model", f"{model.id} is served at /api/ai{model.endpoint}")
            response_format = endpoint_value(RESPONSE_FORMAT, values)
            raw = await run_in_threadpool(playground_raw, model, values)
            result = await run_request(playground, model.mode, raw, http)
        except REFUSED as error:
            return refusal(error, model)
        return images_response(model, result, response_format, http)

    @router.post("/ai/images/generate")
    async def generate(body: OxenBody, http: Request):
        """Text-to-image with FLUX.1 [dev]; answers when the images are ready."""
        return await run_sync(MODELS["dev"].endpoint, body, http)

    @router.post("/ai/images/edit")
    async def edit(body: OxenBody, http: Request):
        """Edit `input_image` (a URL or a data URI) with FLUX.1 Kontext [dev]."""
        return await run_sync(MODELS["kontext"].endpoint, body, http)

    @router.post("/ai/queue")
    async def enqueue(body: OxenBody, http: Request):
        """Queue `num_generations` generations of either model; poll `/api/ai/queue/{id}` or listen
        at `/api/events`."""
        values, model = body.model_dump(), None
        try:
            model = oxen_model(body.model)
            count = endpoint_value(NUM_GENERATIONS, values)
            parsed = await run_in_threadpool(parsed_generations, model, values, count)
            records = await run_in_threadpool(submit_all, model, values, parsed, arrival_time(http.scope))
        except REFUSED as error:
            return refusal(error, model)
        return {"generations": [{"generation_id": record.id, "status": STATUS_WORDS[record.status]}
                                for record in records]}

    @router.get("/ai/queue")
    def list_generations(http: Request, model: str | None = None, status: str | None = None):
        """Generations, newest first: the active ones (queued, processing), or those in `status`."""
        try:
            route = oxen_model(model).key if model is not None else None
            wanted = endpoint_value(STATUS_FILTER, {"status": status})
        except REFUSED as error:
            return refusal(error, None)
        statuses = (QUEUED, RUNNING) if wanted is None else (STORE_STATUSES[wanted],)
        records = jobs.store.recent(API, LIST_LIMIT, route, statuses)
        return {"count": len(records), "generations": [generation(record, http) for record in records]}

    @router.get("/ai/queue/{generation_id}")
    def get_generation(generation_id: str, http: Request):
        """A generation's status, timings, and `result_url` once it succeeded."""
        record = oxen_record(generation_id)
        return record if isinstance(record, JSONResponse) else generation(record, http)

    @router.delete("/ai/queue/{generation_id}")
    def cancel_generation(generation_id: str):
        """Cancel a queued generation at once, a processing one at its next step; a finished one
        stays as it is."""
        record = oxen_record(generation_id)
        if isinstance(record, JSONResponse):
            return record
        jobs.cancel(generation_id)
        return {"status": "success", "generation_id": generation_id}

    def completion_event(record: JobRecord, http: Request) -> str:
        data = {"generation_id": record.id, "status": STATUS_WORDS[record.status], "media_type": "image"}
        if record.status == COMPLETED:
            data.update(model=record.options["model"], url=first_image_url(record, http))
        else:
            data["error"] = record.error
        return f"event: {COMPLETION_EVENT}\ndata: {json.dumps(data)}\n\n"

    async def event_stream(watch: CompletionWatch, http: Request):
        """Each generation that succeeds or fails from now on (a cancelled one is not told, as at
        Oxen), and a keep-alive comment when idle; until the client goes away."""
        yield KEEP_ALIVE
        quiet_since = time.monotonic()
        while not await http.is_disconnected():
            finished = [record for record in await run_in_threadpool(watch.new) if record.status != CANCELLED]
            for record in finished:
                yield completion_event(record, http)
            if finished:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
                yield KEEP_ALIVE
                quiet_since = time.monotonic()
            await asyncio.sleep(EVENT_POLL_SECONDS)

    @router.get("/events")
    def events(http: Request):
        """Server-sent `media_generation_completed` events; subscribe before queueing."""
        return StreamingResponse(event_stream(CompletionWatch(jobs.store), http), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.get("/ai/models")
    def list_models():
        return {"object": "list", "data": [model_object(model) for model in MODELS.values()]}

    @router.get("/ai/models/{model_id:path}")
    def get_model(model_id: str):
        """The model object, with the JSON Schema of its request (`json_request_schema`)."""
        try:
            return model_object(oxen_model(model_id))
        except ModelNotFound as error:
            return oxen_error(404, str(error), "model")

    return router
