"""The hosted FLUX APIs' request shapes, served beside the playground by the same process.

OpenAI Images (`/v1`), Replicate's predictions (`/v1` too), RunPod (`/v2`), fal (`/fal-ai`,
its queue `/queue/fal-ai`) and Oxen.ai (`/api`) adapters all validate with presets/, run
through the same `Playground` (one manager, one line in front of the accelerator) and serve
their images from the same result store under `/results/{id}`.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from pipelines.imaging.images import MIME_TYPES
from pipelines.jobs.runner import JobRunner
from pipelines.service import Playground
from rest import fal_api, fal_queue, openai_api, oxen_api, replicate_api, runpod_api
from rest.common import RestSettings


class Unauthorized(Exception):
    pass


def supplied_key(http: Request) -> str:
    """The key from `Authorization: Bearer …` (OpenAI, RunPod, Replicate), `Authorization: Key …`
    (fal), `Authorization: Token …` (Replicate's older clients) or `X-API-Key`."""
    scheme, _, value = http.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "key", "token") and value:
        return value.strip()
    return http.headers.get("x-api-key", "")


def api_key_check(api_key: str | None):
    async def check(http: Request) -> None:
        if api_key and not hmac.compare_digest(supplied_key(http).encode(), api_key.encode()):
            raise Unauthorized()

    return check


def api_error(http: Request, status: int, message: str, field: str | None = None) -> JSONResponse:
    """An error in the shape of the API that was called."""
    path = http.url.path
    if replicate_api.is_replicate_path(path):
        return replicate_api.replicate_error(status, message)
    if replicate_api.is_model_path(path):
        return replicate_api.both_shapes_error(status, message, field)
    if path.startswith("/v1/"):
        return openai_api.openai_error(status, message, field)
    if path.startswith("/v2/"):
        return runpod_api.failed(status, message)
    if path.startswith("/api/"):
        return oxen_api.oxen_error(status, message, field)
    return JSONResponse(status_code=status, content={"detail": message})


def unauthorized(http: Request, error: Unauthorized) -> JSONResponse:
    return api_error(http, 401, "A valid API key is required: send it as 'Authorization: Bearer <key>'.")


def body_error(http: Request, error: RequestValidationError) -> JSONResponse:
    """A malformed body (wrong JSON types) in the shape of the API that was called."""
    problems = error.errors()
    first = problems[0] if problems else {"loc": ["body"], "msg": "invalid request body"}
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    message = f"{field}: {first['msg']}"
    if http.url.path.startswith("/v2/"):
        message = f"Invalid parameter: {message}"
    if replicate_api.is_replicate_path(http.url.path):
        return api_error(http, 422, f"- {message}", field)
    if http.url.path.startswith(("/v1/", "/v2/", "/api/")):
        return api_error(http, 400, message, field)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(problems)})


def add_rest_api(app: FastAPI, playground: Playground, settings: RestSettings, jobs: JobRunner) -> None:
    """Add the REST routes and `/results/{id}` to `app` (before Gradio is mounted at `/`).
    The async APIs keep their jobs in `jobs`' durable store. With `settings.api_key`, every API
    route asks for it; result URLs stay capability URLs (random ids), so that image links work
    where they are handed on."""
    # fal_queue last: its unknown-app catch-all
    for module in (openai_api, replicate_api, runpod_api, fal_api, oxen_api, fal_queue):
        app.include_router(module.create_router(playground, settings, jobs),
                           dependencies=[Depends(api_key_check(settings.api_key))])
    app.add_exception_handler(RequestValidationError, body_error)
    app.add_exception_handler(Unauthorized, unauthorized)

    @app.get("/results/{result_id}", tags=["Results"])
    def get_result(result_id: str):
        """A generated image, kept for the configured retention (7 days by default)."""
        path = playground.store.path(result_id)
        if path is None:
            return JSONResponse(status_code=404, content={"error": f"No result {result_id!r}; results are "
                                                          "kept for a limited time"})
        return FileResponse(path, media_type=MIME_TYPES[path.suffix[1:]])
