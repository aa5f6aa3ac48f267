"""The hosted FLUX APIs' request shapes, served beside the playground by the same process.

OpenAI Images (`/v1`), RunPod (`/v2`) and fal (`/fal-ai`) adapters all validate with
presets/, run through the same `Playground` (one manager, one accelerator lock) and serve
their images from the same result store under `/results/{id}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from pipelines.images import MIME_TYPES
from pipelines.service import Playground
from rest import fal_api, openai_api, runpod_api
from rest.common import RestSettings


def body_error(http: Request, error: RequestValidationError) -> JSONResponse:
    """A malformed body (wrong JSON types) in the shape of the API that was called."""
    problems = error.errors()
    first = problems[0] if problems else {"loc": ["body"], "msg": "invalid request body"}
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    message = f"{field}: {first['msg']}"
    path = http.url.path
    if path.startswith("/v1/"):
        return openai_api.openai_error(400, message, field)
    if path.startswith("/v2/"):
        return runpod_api.failed(400, f"Invalid parameter: {message}")
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(problems)})


def add_rest_api(app: FastAPI, playground: Playground, settings: RestSettings) -> None:
    """Add the REST routes and `/results/{id}` to `app` (before Gradio is mounted at `/`)."""
    for module in (openai_api, runpod_api, fal_api):
        app.include_router(module.create_router(playground, settings))
    app.add_exception_handler(RequestValidationError, body_error)

    @app.get("/results/{result_id}", tags=["Results"])
    def get_result(result_id: str):
        """A generated image, kept for the configured retention (7 days by default)."""
        path = playground.store.path(result_id)
        if path is None:
            return JSONResponse(status_code=404, content={"error": f"No result {result_id!r}; results are "
                                                          "kept for a limited time"})
        return FileResponse(path, media_type=MIME_TYPES[path.suffix[1:]])
