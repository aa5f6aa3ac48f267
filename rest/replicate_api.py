"""Replicate's predictions API for black-forest-labs/flux-dev, flux-kontext-dev and
flux-redux-dev, so that the official `replicate` client works unchanged with
`replicate.Client(base_url="http://127.0.0.1:7860")`: `run`, `stream`, `predictions.create`
/ `get` / `cancel` / `list`, `models.get`, versions and file inputs (`/v1/files`).

Every prediction is a job of the durable store (`pipelines/jobs/`). `Prefer: wait` (or
`wait=N`, 1-60 s) holds the request that long; a prediction still unfinished then comes back
as "starting", the only status on which the client goes on to poll. The model's inputs are
declared in `rest/replicate_models.py`; prediction objects and events are made in
`rest/replicate_predictions.py`.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError, ServerBusy
from pipelines.jobs.runner import JobRunner
from pipelines.jobs.store import FINISHED, UNFINISHED, JobRecord
from rest import openai_api
from rest.arrival import arrival_time
from rest.common import (
    RestSettings,
    UnknownModel,
    public_base,
    rename_field,
    result_url_at,
    wait_for_job,
)
from rest.inputs import load_image_input
from rest.replicate_files import FileStore, create_files_router, iso_time, own_file_id
from rest.replicate_models import (
    COG_VERSION,
    MODELS,
    OWNER,
    VERSION_IDS,
    ReplicateModel,
    declared_values,
    find_model,
    find_version,
    ignored_inputs,
    openapi_schema,
    raw_fields,
)
from rest.replicate_predictions import prediction_events, prediction_json

API = "replicate"
MAX_WAIT_SECONDS = 60
PREFER_WAIT = re.compile(r"^wait(?:=(\d+))?$")
# A cancel answers once the job stopped (at its next denoising step), or after this long.
CANCEL_WAIT_SECONDS = 5
# The paths only Replicate has under /v1; `GET /v1/models/{owner}/{name}` is OpenAI's too.
REPLICATE_PATHS = re.compile(r"^/v1/(predictions|files)(/|$)|^/v1/models/[^/]+/[^/]+/(predictions|versions)(/|$)")
MODEL_PATH = re.compile(r"^/v1/models/[^/]+/[^/]+/?$")
TITLES = {401: "Unauthenticated", 404: "Not found", 413: "Payload too large", 422: "Input validation failed",
          429: "Request was throttled"}


def is_replicate_path(path: str) -> bool:
    return bool(REPLICATE_PATHS.match(path))


def is_model_path(path: str) -> bool:
    """A two-segment model path, which either API may have been called on."""
    return bool(MODEL_PATH.match(path))


def slash_encoded(http: Request) -> bool:
    """Whether the path's owner/name was one id with its slash encoded: OpenAI's
    `models.retrieve("black-forest-labs/FLUX.1-dev")` sends it so; Replicate's client does not."""
    return b"%2f" in http.scope.get("raw_path", b"").lower()


def replicate_error(status: int, detail: str, title: str | None = None) -> JSONResponse:
    """Replicate's problem details, which the client reads into ReplicateError."""
    return JSONResponse(status_code=status, content={"title": title or TITLES.get(status, "Error"),
                                                     "detail": detail, "status": status})


def both_shapes_error(status: int, message: str, param: str | None = None) -> JSONResponse:
    """An error for a path both APIs have: OpenAI's `error` and Replicate's fields in one body."""
    return JSONResponse(status_code=status, content={**openai_api.openai_error_body(message, param),
                                                     "title": TITLES.get(status, "Error"), "detail": message,
                                                     "status": status})


def validation_error(error: FieldError, model: ReplicateModel) -> JSONResponse:
    """Every problem, each on its line and in the model's names, as Replicate lists them."""
    problems = (rename_field(problem, model.field_names) for problem in error.problems)
    return replicate_error(422, "\n".join(f"- input.{field}: {message}" for field, message in problems))


def wait_seconds(prefer: str | None) -> int | None:
    """How long `Prefer: wait` (60 s) or `Prefer: wait=N` asks to hold the request; None when
    it does not."""
    for preference in (prefer or "").replace(" ", "").lower().split(","):
        if match := PREFER_WAIT.match(preference):
            return min(max(int(match[1] or MAX_WAIT_SECONDS), 1), MAX_WAIT_SECONDS)
    return None


class PredictionBody(BaseModel):
    """A prediction request: the model's `input`, and how to hear of its progress."""

    model_config = ConfigDict(extra="allow")
    input: dict[str, Any]
    stream: bool | None = None  # every prediction streams: urls.stream is always given
    webhook: str | None = None
    webhook_completed: str | None = None


class VersionPredictionBody(PredictionBody):
    version: str  # a version id, "owner/name" or "owner/name:version"


def model_json(model: ReplicateModel, base: str, run_count: int, version: dict[str, Any]) -> dict[str, Any]:
    return {"url": f"{base}/v1/models/{model.full_name}", "owner": OWNER, "name": model.name,
            "description": model.description, "visibility": "public", "github_url": None, "paper_url": None,
            "license_url": None, "run_count": run_count, "cover_image_url": None, "default_example": None,
            "latest_version": version}


def create_router(playground, settings: RestSettings, jobs: JobRunner) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["Replicate-style predictions"])
    files = FileStore(playground.outputs_dir / "replicate-files")
    versions_since = iso_time(time.time())  # a version is its schema, which this server has had since it started

    def base_of(http: Request) -> str:
        return public_base(http, settings)

    router.include_router(create_files_router(files, base_of, settings.fetch.max_bytes, replicate_error))

    def version_json(model: ReplicateModel) -> dict[str, Any]:
        return {"id": VERSION_IDS[model.full_name], "created_at": versions_since, "cog_version": COG_VERSION,
                "openapi_schema": openapi_schema(model)}

    def local_bytes(value: Any, field: str, base: str) -> bytes | None:
        """An input URL naming one of this server's uploads or results, read from disk."""
        if (file_id := own_file_id(value, base)) is not None:
            data = files.read(file_id)
            if data is None:
                raise FieldError(field, f"{field}: the file {file_id} is not stored here (files are kept for a day)")
            return data
        prefix = result_url_at(base, "")
        if isinstance(value, str) and value.startswith(prefix):
            path = playground.store.path(value[len(prefix):])
            if path is None:
                raise FieldError(field, f"{field}: {value} is no longer kept (results are kept for a limited time)")
            return path.read_bytes()
        return None

    def input_image(model: ReplicateModel, values: dict[str, Any], base: str):
        spec = model.image_input
        value = values[spec.name]
        if value is None and not spec.required:
            return None
        local = local_bytes(value, spec.name, base)
        return load_image_input(local if local is not None else value, spec.name, settings.fetch)

    def submit(model: ReplicateModel, body: PredictionBody, http: Request) -> JobRecord | JSONResponse:
        """Validate (fetching any image) and queue; refusals come before anything is queued."""
        try:
            values = declared_values(model, body.input)
            mode, raw = raw_fields(model, values, input_image(model, values, base_of(http)))
            request = playground.parse(mode, raw)
        except FieldError as error:
            return validation_error(error, model)
        options = {"input": body.input, "ignored": ignored_inputs(model, body.input)}
        try:
            return jobs.submit(API, model.full_name, raw, request, options, arrival_time(http.scope))
        except ServerBusy as error:
            return replicate_error(429, str(error))

    async def create_prediction(model: ReplicateModel, body: PredictionBody, http: Request) -> JSONResponse:
        if body.webhook or body.webhook_completed:
            return replicate_error(422, "- webhook: this server does not call webhooks; poll urls.get or read "
                                        "urls.stream")
        record = await run_in_threadpool(submit, model, body, http)
        if isinstance(record, JSONResponse):
            return record
        seconds = wait_seconds(http.headers.get("prefer"))
        if seconds is not None:  # the wait counts from the request's arrival, as the client's timeout does
            record = await wait_for_job(jobs, record.id, max(seconds - (time.monotonic() - arrival_time(http.scope)), 0))
        state = prediction_json(record, jobs.live(record.id), base_of(http))
        if seconds is not None and not record.finished:
            state["status"] = "starting"  # the client polls only a "starting" prediction (replicate/run.py)
        return JSONResponse(status_code=201, content=state)

    def own_record(prediction_id: str) -> JobRecord | None:
        record = jobs.get(prediction_id)
        return record if record is not None and record.api == API else None

    def unknown_prediction(prediction_id: str) -> JSONResponse:
        return replicate_error(404, f"No prediction {prediction_id!r} (predictions are kept for the result retention)")

    def unknown_model(owner: str, name: str) -> JSONResponse:
        return replicate_error(404, f"No model {owner}/{name}; this server runs {', '.join(MODELS)}")

    @router.post("/models/{owner}/{name}/predictions", status_code=201)
    async def create_model_prediction(owner: str, name: str, body: PredictionBody, http: Request):
        """Run a model on `input` (the client's `run`, `stream`, `models.predictions.create`)."""
        model = find_model(owner, name)
        return await create_prediction(model, body, http) if model else unknown_model(owner, name)

    @router.post("/predictions", status_code=201)
    async def create_version_prediction(body: VersionPredictionBody, http: Request):
        """Run the model a `version` names (`predictions.create(version=...)`)."""
        model = find_version(body.version)
        if model is None:
            return replicate_error(422, f"No version {body.version!r}; the versions here are those of "
                                        f"{', '.join(MODELS)} (GET /v1/models/{{owner}}/{{name}}/versions)",
                                   title="Invalid version or not permitted")
        return await create_prediction(model, body, http)

    @router.get("/predictions")
    def list_predictions(http: Request):
        """The latest predictions, newest first."""
        return {"next": None, "previous": None, "results": [
            prediction_json(record, jobs.live(record.id), base_of(http)) for record in jobs.store.recent(API)]}

    @router.get("/predictions/{prediction_id}")
    def get_prediction(prediction_id: str, http: Request):
        record = own_record(prediction_id)
        if record is None:
            return unknown_prediction(prediction_id)
        return prediction_json(record, jobs.live(prediction_id), base_of(http))

    @router.post("/predictions/{prediction_id}/cancel")
    async def cancel_prediction(prediction_id: str, http: Request):
        """Cancel a queued prediction at once, a running one at its next denoising step."""
        if await run_in_threadpool(own_record, prediction_id) is None:
            return unknown_prediction(prediction_id)
        await run_in_threadpool(jobs.cancel, prediction_id)
        record = await wait_for_job(jobs, prediction_id, CANCEL_WAIT_SECONDS)
        return prediction_json(record, jobs.live(prediction_id), base_of(http))

    @router.get("/predictions/{prediction_id}/stream")
    def stream_prediction(prediction_id: str, http: Request):
        """Server-sent events (`urls.stream`): logs, then each output URL or the error, then done."""
        if own_record(prediction_id) is None:
            return unknown_prediction(prediction_id)
        return StreamingResponse(prediction_events(jobs, prediction_id, base_of(http)),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.get("/models/{owner}/{name}")
    def get_model(owner: str, name: str, http: Request):
        """Replicate's model, with its latest version's schema, for Replicate's names; for the
        other names with a slash, OpenAI's model object."""
        model = find_model(owner, name)
        if model is not None and not slash_encoded(http):
            counts = jobs.store.counts(API, model.full_name)
            return model_json(model, base_of(http), sum(counts[status] for status in (*UNFINISHED, *FINISHED)),
                              version_json(model))
        answer = openai_api.model_response(f"{owner}/{name}")
        if isinstance(answer, JSONResponse) and not slash_encoded(http):  # unknown: either API may be asking
            return both_shapes_error(404, f"{UnknownModel(f'{owner}/{name}')}; Replicate's models here: "
                                          f"{', '.join(MODELS)}", "model")
        return answer

    @router.get("/models/{owner}/{name}/versions")
    def list_versions(owner: str, name: str):
        model = find_model(owner, name)
        if model is None:
            return unknown_model(owner, name)
        return {"next": None, "previous": None, "results": [version_json(model)]}

    @router.get("/models/{owner}/{name}/versions/{version_id}")
    def get_version(owner: str, name: str, version_id: str):
        model = find_model(owner, name)
        if model is None:
            return unknown_model(owner, name)
        if version_id != VERSION_IDS[model.full_name]:
            return replicate_error(404, f"No version {version_id!r} of {model.full_name}; its version is "
                                        f"{VERSION_IDS[model.full_name]}")
        return version_json(model)

    return router
