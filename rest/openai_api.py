"""The OpenAI Images API: `POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models`
and `GET /v1/models/{id}`.

The official `openai` SDK works against it unchanged (`OpenAI(base_url=".../v1")`), streaming
included (`stream=True` with `partial_images`: `openai_stream.py`). FLUX extras
(`guidance_scale`, `num_inference_steps`, `negative_prompt`, `seed`, ...) and seed 002's
gateway parameters go in the body, or through the SDK's `extra_body`: `aspect_ratio`,
`resolution` and `megapixels` (`openai_sizes.py`), gif and avif (`openai_formats.py`),
`cfg_scale`, `output_quality`, `acceleration`, `go_fast` and `sync_mode` (here).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError
from pipelines.imaging.images import upright_size
from pipelines.service import GenerationError, GenerationResult, ServerBusy, StoredImage
from presets import MATCH_INPUT, PRESETS
from presets.acceleration import PROFILES
from rest.arrival import arrival_time
from rest.common import (
    MODEL_ALIASES,
    RestSettings,
    UnknownModel,
    acceleration_step_cache,
    all_errors_message,
    drop_none,
    first_error,
    go_fast_step_cache,
    resolve_model,
    result_url,
    run_request,
)
from rest.inputs import load_image_input
from rest.openai_formats import OPENAI_FORMATS, checked_format, final_images, run_format
from rest.openai_sizes import output_size, tier_name, tier_sides
from rest.openai_stream import StreamSpec, image_stream, partial_image_count

# Our field names in OpenAI's vocabulary, for error messages.
FIELD_NAMES = {"num_images": "n", "width": "size", "height": "size", "image_size": "size", "mask_image": "mask"}
# Our fields the request may name in more than one way: FLUX's or OpenAI's name first, then
# the gateway's (seed 002). The first given is used, and errors name it as it was sent.
SYNONYMS = {"guidance_scale": ("guidance_scale", "cfg_scale"),
            "output_quality": ("output_compression", "output_quality")}
EDIT_MODES = {"kontext": "kontext_edit", "dev": "image_to_image", "redux": "redux_variation"}
# A scale without a shape keeps the shape of text-to-image's default size.
GENERATION_SHAPE = PRESETS.image_sizes[PRESETS.modes["text_to_image"].image_size]
TIERS = ", ".join(tier_name(side) for side in tier_sides())


def openai_error_body(message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=openai_error_body(message, param, code))


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "black-forest-labs"}


def model_response(model_id: str) -> dict[str, Any] | JSONResponse:
    """OpenAI's model object for any of our names (as asked for), or its 404."""
    try:
        resolve_model(model_id)
    except UnknownModel as error:
        return openai_error(404, str(error), "model", "model_not_found")
    return model_object(model_id)


class ImageGenerationBody(BaseModel):
    """OpenAI's image generation request, with FLUX's own parameters and seed 002's gateway's beside it."""

    model_config = ConfigDict(extra="allow")
    prompt: str
    model: str = "flux.1-dev"
    n: int | None = Field(None, description="Number of images, 1-4")
    size: str | None = Field(None, description=f'"WxH" (each side a multiple of {PRESETS.size_multiple} from '
                                               f'{PRESETS.size_min} to {PRESETS.size_max}), an aspect ratio "W:H", '
                                               'or "auto" (the default size); the most specific, it wins')
    aspect_ratio: str | None = Field(None, description='"W:H": the shape, at resolution\'s scale (1K by default)')
    resolution: str | float | None = Field(None, description=f'A tier, "1K" or megapixels "1"; the nearest of this '
                                                             f"server's ({TIERS}) is used")
    megapixels: str | float | None = Field(None, description='Replicate\'s "0.25" or "1": as resolution')
    response_format: Literal["url", "b64_json"] | None = Field(None, description="url by default")
    output_format: str | None = Field(None, description=", ".join(OPENAI_FORMATS))
    output_compression: int | None = Field(None, description="Quality 1-100 for jpeg, webp and avif")
    output_quality: int | None = Field(None, description="As output_compression (Replicate's name)")
    stream: bool = Field(False, description="Server-sent events: partial images, then the completed images")
    partial_images: int | None = Field(None, description="Partial images per image while streaming, 0-3")
    seed: int | None = None
    guidance_scale: float | None = None
    cfg_scale: float | None = Field(None, description="As guidance_scale")
    num_inference_steps: int | None = None
    negative_prompt: str | None = None
    true_cfg_scale: float | None = None
    enable_safety_checker: bool | None = None
    disable_safety_checker: bool | None = None
    acceleration: str | None = Field(None, description="none, regular or high (step caching on), as fal's")
    go_fast: bool | None = Field(None, description="true: the server's step caching; false: none (Replicate's)")
    sync_mode: bool | None = Field(None, description="true: b64_json unless response_format says otherwise (fal's)")


def sent_name(values: dict[str, Any], field: str) -> str:
    """The name the request gave `field` under (its first synonym given), else its first."""
    names = SYNONYMS[field]
    return next((name for name in names if values.get(name) is not None), names[0])


def field_names(values: dict[str, Any]) -> dict[str, str]:
    """Our field names in the request's own words, for its error messages."""
    return {**FIELD_NAMES, **{field: sent_name(values, field) for field in SYNONYMS}}


def step_cache(values: dict[str, Any]) -> str | None:
    """The request's step caching from fal's `acceleration`, else Replicate's `go_fast`."""
    acceleration, go_fast = values.get("acceleration"), values.get("go_fast")
    if acceleration is not None:
        if acceleration not in PROFILES:
            raise FieldError("acceleration", f"acceleration must be one of {', '.join(PROFILES)}; got {acceleration!r}")
        return acceleration_step_cache(acceleration)
    if go_fast is not None and not isinstance(go_fast, bool):
        raise FieldError("go_fast", f"go_fast must be true or false, got {go_fast!r}")
    return None if go_fast is None else go_fast_step_cache(go_fast)


def safety_checker(values: dict[str, Any]) -> bool | None:
    """fal's `enable_safety_checker`, or Replicate's `disable_safety_checker` (which wins)."""
    if values.get("disable_safety_checker") is not None:
        return not values["disable_safety_checker"]
    return values.get("enable_safety_checker")


def shared_fields(values: dict[str, Any], default_shape: tuple[int, int]) -> dict[str, Any]:
    """OpenAI's fields mapped onto ours; None means "the preset default"."""
    return drop_none({
        "prompt": values.get("prompt"), "num_images": values.get("n"),
        "output_format": run_format(checked_format(values.get("output_format"))),
        "output_quality": values.get(sent_name(values, "output_quality")), "seed": values.get("seed"),
        "guidance_scale": values.get(sent_name(values, "guidance_scale")),
        "num_inference_steps": values.get("num_inference_steps"), "negative_prompt": values.get("negative_prompt"),
        "true_cfg_scale": values.get("true_cfg_scale"), "strength": values.get("strength"),
        "enable_safety_checker": safety_checker(values), "step_cache": step_cache(values),
        **output_size(values, default_shape),
    })


def answers_b64(values: dict[str, Any]) -> bool:
    """Whether images are answered as b64_json (asked for, or fal's sync_mode) rather than URLs."""
    return (values.get("response_format") or ("b64_json" if values.get("sync_mode") else "url")) == "b64_json"


def image_item(image: StoredImage, prompt: str, as_b64: bool, http: Request, settings: RestSettings) -> dict[str, Any]:
    item = {"revised_prompt": prompt}
    if as_b64:
        item["b64_json"] = base64.b64encode(image.file.read_bytes()).decode()
    else:
        item["url"] = result_url(http, settings, image.result_id)
    return item


def images_response(result: GenerationResult, images: list[StoredImage], output_format: str, as_b64: bool,
                    http: Request, settings: RestSettings) -> dict[str, Any]:
    """OpenAI's images response, with the seed, size, safety flags, model and warnings beside it."""
    data = [image_item(image, result.request.prompt, as_b64, http, settings) for image in images]
    return {
        "created": int(time.time()), "data": data, "output_format": output_format,
        "size": f"{result.request.width}x{result.request.height}", "seed": result.request.seed,
        "has_nsfw_concepts": result.has_nsfw_concepts, "model": result.model, "warnings": result.info["warnings"],
    }


def busy(error: ServerBusy) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": {"message": str(error), "type": "server_error",
                                                            "param": None, "code": "server_busy"}})


def stream_spec(kind: str, values: dict[str, Any], output_format: str) -> StreamSpec | None:
    """How to stream the request's events, or None when it is not streamed."""
    count = partial_image_count(values)  # checked whether or not the request streams
    return StreamSpec(kind, count, output_format) if values.get("stream") else None


async def answer(playground, settings: RestSettings, mode: str, raw: dict, values: dict[str, Any], kind: str,
                 http: Request):
    """Validate and run a request, answering OpenAI's images response or, with `stream`, its events."""
    names = field_names(values)
    output_format = checked_format(values.get("output_format"))  # already checked by shared_fields
    try:
        spec = stream_spec(kind, values, output_format)
        if spec is not None:
            request = await run_in_threadpool(playground.parse, mode, raw)
            return image_stream(playground, request, arrival_time(http.scope), spec)
        result = await run_request(playground, mode, raw, http)
    except FieldError as error:
        param, _ = first_error(error, names)
        return openai_error(400, all_errors_message(error, names), param)
    except ServerBusy as error:
        return busy(error)
    except GenerationError as error:
        return openai_error(500, str(error), code="generation_failed")
    images = await run_in_threadpool(final_images, playground.store, result, output_format)
    return images_response(result, images, output_format, answers_b64(values), http, settings)


def repaint_mask(data: bytes, settings: RestSettings) -> Image.Image:
    """OpenAI's mask (a PNG whose fully transparent pixels mark what to edit) as ours (white
    marks what is repainted). A mask without transparency edits nothing, and says so."""
    mask = load_image_input(data, "mask", settings.fetch)
    try:
        alpha = mask.convert("RGBA").getchannel("A")
    except (OSError, ValueError) as error:
        raise FieldError("mask", f"mask could not be read as an image ({error})") from None
    if alpha.getextrema()[0] == 255:
        raise FieldError("mask", "mask has no transparent pixels: make transparent the area to edit "
                                 "(as OpenAI's images.edit takes it)")
    return ImageOps.invert(alpha)


def numeric(value: Any) -> Any:
    """A multipart form value as a number when it reads as one (forms carry only text)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def create_router(playground, settings: RestSettings, jobs=None) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI Images API"])

    @router.get("/models")
    def list_models() -> dict:
        """The models this server serves, under their OpenAI-compatible ids."""
        return {"object": "list", "data": [model_object(aliases[0]) for aliases in MODEL_ALIASES.values()]}

    @router.get("/models/{model_id}")
    def retrieve_model(model_id: str):
        """One model, under any of its names (OpenAI `models.retrieve`). Names with a slash
        (black-forest-labs/FLUX.1-dev) are answered by `GET /v1/models/{owner}/{name}`."""
        return model_response(model_id)

    @router.post("/images/generations")
    async def create_image(body: ImageGenerationBody, http: Request):
        """Text-to-image with FLUX.1 [dev] (OpenAI `images.generate`; `stream` for its events)."""
        values = body.model_dump()
        try:
            model = resolve_model(body.model)
            raw = shared_fields(values, GENERATION_SHAPE)
        except UnknownModel as error:
            return openai_error(404, str(error), "model", "model_not_found")
        except FieldError as error:
            return openai_error(400, str(error), error.field)
        if model != "dev":
            return openai_error(400, f"{body.model} edits or varies images: use /v1/images/edits", "model")
        return await answer(playground, settings, "text_to_image", raw, values, "image_generation", http)

    @router.post("/images/edits")
    async def edit_image(http: Request):
        """Edit an uploaded image (OpenAI `images.edit`, multipart; `stream` for its events):
        Kontext by default; with model flux.1-dev, image-to-image (`strength`); with
        flux.1-redux-dev, variations; with a `mask` (transparent where the image changes, as
        OpenAI's), inpainting."""
        form = await http.form()
        values = {key: numeric(value) for key, value in form.items() if not hasattr(value, "read")}
        uploads = [value for key, value in form.multi_items() if key in ("image", "image[]") and hasattr(value, "read")]
        try:
            model = resolve_model(str(values.get("model") or "flux.1-kontext-dev"))
            mode = EDIT_MODES[model]
            if not uploads:
                raise FieldError("image", "image is required: upload the image to edit")
            image = load_image_input(await uploads[0].read(), "image", settings.fetch)
            raw = {"image_size": MATCH_INPUT, **shared_fields(values, upright_size(image)), "image": image}
            if hasattr(form.get("mask"), "read"):
                if model == "redux":
                    raise FieldError("mask", "mask: Redux makes variations of the whole image; inpaint with "
                                             "flux.1-dev or flux.1-kontext-dev")
                mode, raw["mask_image"] = "inpaint", repaint_mask(await form["mask"].read(), settings)
        except UnknownModel as error:
            return openai_error(404, str(error), "model", "model_not_found")
        except FieldError as error:
            return openai_error(400, str(error), error.field)
        return await answer(playground, settings, mode, raw, values, "image_edit", http)

    return router
