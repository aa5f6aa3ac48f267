"""fal-style endpoints: `POST /fal-ai/flux/dev` and its image-to-image, Redux and Kontext
siblings, and the `flux-lora` family (LoRAs by path and scale, inpainting, Canny and Depth
control), with fal's request fields, defaults (jpeg, guidance 3.5, landscape_4_3) and response
(`images`, `seed`, `has_nsfw_concepts`, `prompt`, `timings`).

A body becomes a request in one place, `parse_body`, and a result becomes fal's response in
one place, `fal_response`: the queue and streaming routes (`fal_queue.py`) use both.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError
from pipelines.jobs.runner import result_summary
from pipelines.modes.request_types import GenerationRequest
from pipelines.outputs.results import ResultStore
from pipelines.service import GenerationError, ServerBusy
from rest.arrival import arrival_time
from rest.common import RestSettings, acceleration_step_cache, data_uri, drop_none, rename_field, result_url
from rest.inputs import load_image_input

APP_OWNER = "fal-ai"  # fal's apps are named owner/alias[/path]: fal-ai/flux/dev/image-to-image

# Our field names in fal's vocabulary, for error messages.
FIELD_NAMES = {"image": "image_url", "mask_image": "mask_url", "width": "image_size", "height": "image_size",
               "source": "loras"}


class LoraWeight(BaseModel):
    path: str = Field(description="A URL to a .safetensors file, a hub repository, or a loaded LoRA's name")
    scale: float = 1.0


class FalBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str | None = None
    image_size: str | dict[str, int] | None = Field(
        None, description="A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, "
                          "landscape_16_9) or {width, height}")
    num_inference_steps: int | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    sync_mode: bool = Field(False, description="Return the images as data URIs")
    num_images: int | None = None
    enable_safety_checker: bool | None = None
    output_format: str | None = "jpeg"
    acceleration: Literal["none", "regular", "high"] | None = Field(
        None, description="Per request: high turns step caching on, none and regular turn it off; compilation "
                          "and quantization are the server's (--acceleration). Left out: the server's default.")
    image_url: str | None = Field(None, description="Input image: a URL or a data URI (image modes)")
    mask_url: str | None = Field(None, description="Inpainting mask (white is repainted): a URL or a data URI")
    strength: float | None = None
    loras: list[LoraWeight] | None = Field(None, description="LoRAs to apply (flux-lora routes): each is "
                                           "loaded on first use from its path (a URL or a hub repository)")


def fal_errors(problems: list[tuple[str, str]], status: int = 422) -> JSONResponse:
    """fal's error body: each (field, message) problem located in the request body."""
    return JSONResponse(status_code=status, content={
        "detail": [{"loc": ["body", field], "msg": message, "type": "value_error"} for field, message in problems]})


def fal_error(field: str, message: str, status: int = 422) -> JSONResponse:
    return fal_errors([(field, message)], status)


def field_errors(error: FieldError) -> JSONResponse:
    """Every problem of a request, each in fal's names."""
    return fal_errors([rename_field(problem, FIELD_NAMES) for problem in error.problems])


def raw_fields(body: FalBody, mode: str, defaults: dict[str, Any], settings: RestSettings) -> dict[str, Any]:
    values = {**defaults, **drop_none(body.model_dump(exclude={"sync_mode", "acceleration", "loras"}))}
    if body.acceleration is not None:
        values["step_cache"] = acceleration_step_cache(body.acceleration)
    size = values.pop("image_size", None)
    if isinstance(size, dict):
        values.update(image_size="custom", width=size.get("width"), height=size.get("height"))
    elif size is not None:
        values["image_size"] = size
    if mode != "text_to_image":
        values["image"] = load_image_input(values.pop("image_url", None), "image_url", settings.fetch)
    if mode == "inpaint":
        values["mask_image"] = load_image_input(values.pop("mask_url", None), "mask_url", settings.fetch)
    return values


def lora_names(playground, loras: list[LoraWeight]) -> list[tuple[str, float]]:
    """fal's `loras` as (loaded name, scale): each path is a loaded LoRA's name or source, or is
    loaded now (and stays loaded for the next request that names it)."""
    loaded = playground.manager.loras.status()
    by_source = {entry["source"]: name for name, entry in loaded.items()}
    pairs = []
    for lora in loras:
        name = lora.path if lora.path in loaded else by_source.get(lora.path)
        if name is None:
            name = playground.load_lora(lora.path)["name"]
        pairs.append((name, lora.scale))
    return pairs


def image_url(image: dict[str, Any], sync_mode: bool, http: Request, settings: RestSettings,
              store: ResultStore) -> str:
    """A result image as fal hands it out: a data URI with sync_mode, else its URL here."""
    path = store.path(image["result_id"]) if sync_mode else None
    if path is None:
        return result_url(http, settings, image["result_id"])
    return data_uri(path.read_bytes(), image["content_type"])


def fal_response(summary: dict[str, Any], sync_mode: bool, http: Request, settings: RestSettings,
                 store: ResultStore) -> dict[str, Any]:
    """fal's response, from a result's summary (`result_summary`): the sync routes' answer, the
    queue's result and the stream's last event alike."""
    images = [{"url": image_url(image, sync_mode, http, settings, store), "width": image["width"],
               "height": image["height"], "content_type": image["content_type"]} for image in summary["images"]]
    return {"images": images, "timings": {"inference": summary["executed_ms"] / 1000}, "seed": summary["seed"],
            "has_nsfw_concepts": [image["has_nsfw_concepts"] for image in summary["images"]],
            "prompt": summary["prompt"], "warnings": summary["warnings"]}


# Each route: the mode it runs and fal's defaults for it.
ROUTES = {
    "/flux/dev": ("text_to_image", {"image_size": "landscape_4_3"}),
    "/flux/dev/image-to-image": ("image_to_image", {"strength": 0.95, "num_inference_steps": 40,
                                                    "image_size": "match_input"}),
    "/flux/dev/redux": ("redux_variation", {"image_size": "landscape_4_3"}),
    "/flux-kontext/dev": ("kontext_edit", {"guidance_scale": 2.5, "image_size": "match_input"}),
    "/flux-lora": ("text_to_image", {"image_size": "landscape_4_3"}),
    "/flux-lora/image-to-image": ("image_to_image", {"strength": 0.85, "image_size": "match_input"}),
    "/flux-lora/inpainting": ("inpaint", {"strength": 0.85, "image_size": "match_input"}),
    "/flux-lora-canny": ("control", {"control_type": "canny", "image_size": "match_input"}),
    "/flux-lora-depth": ("control", {"control_type": "depth", "image_size": "match_input"}),
}


def app_id(path: str) -> str:
    """A route's fal app id: "/flux/dev" -> "fal-ai/flux/dev"."""
    return APP_OWNER + path


def parse_body(playground, settings: RestSettings, path: str, body: FalBody) -> tuple[dict[str, Any],
                                                                                     GenerationRequest]:
    """The one way a fal body becomes a request, for the sync, queue and stream routes alike:
    (raw fields, validated request), with the route's defaults and its LoRAs loaded. Raises
    FieldError. Blocking (it may fetch image URLs and LoRAs): call it off the event loop."""
    mode, defaults = ROUTES[path]
    raw = raw_fields(body, mode, defaults, settings)
    if body.loras:
        raw["loras"] = lora_names(playground, body.loras)
    return raw, playground.parse(mode, raw)


def create_router(playground, settings: RestSettings, jobs=None) -> APIRouter:
    router = APIRouter(prefix=f"/{APP_OWNER}", tags=["fal-style endpoints"])

    def add_route(path: str, mode: str) -> None:
        async def handle(body: FalBody, http: Request):
            try:
                _, request = await run_in_threadpool(parse_body, playground, settings, path, body)
                result = await run_in_threadpool(playground.execute, request, arrival_time(http.scope))
            except FieldError as error:
                return field_errors(error)
            except ServerBusy as error:
                return fal_error("body", str(error), status=503)
            except GenerationError as error:
                return fal_error("body", str(error), status=500)
            return fal_response(result_summary(result), body.sync_mode, http, settings, playground.store)

        handle.__doc__ = f"{mode.replace('_', ' ').capitalize()} with fal's request and response shape."
        router.add_api_route(path, handle, methods=["POST"], name=f"fal{path.replace('/', '_')}")

    for path, (mode, _) in ROUTES.items():
        add_route(path, mode)
    return router
