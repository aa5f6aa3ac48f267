"""The OpenAI Images API: `POST /v1/images/generations`, `POST /v1/images/edits`, `GET /v1/models`
and `GET /v1/models/{id}`.

The official `openai` SDK works against it unchanged (`OpenAI(base_url=".../v1")`). FLUX
extras (`guidance_scale`, `num_inference_steps`, `negative_prompt`, `seed`, ...) go in the
body, or through the SDK's `extra_body`.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import FieldError
from pipelines.imaging.images import size_at_area
from pipelines.service import GenerationError, GenerationResult, ServerBusy
from presets import PRESETS
from rest.common import (
    MODEL_ALIASES,
    RestSettings,
    UnknownModel,
    all_errors_message,
    drop_none,
    first_error,
    resolve_model,
    result_url,
    run_request,
)
from rest.inputs import load_image_input

# Our field names in OpenAI's vocabulary, for error messages.
FIELD_NAMES = {"num_images": "n", "output_quality": "output_compression", "width": "size", "height": "size",
               "image_size": "size", "mask_image": "mask"}
ONE_MEGAPIXEL = 1024 * 1024
EDIT_MODES = {"kontext": "kontext_edit", "dev": "image_to_image", "redux": "redux_variation"}


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
    """OpenAI's image generation request, with FLUX's own parameters beside it."""

    model_config = ConfigDict(extra="allow")
    prompt: str
    model: str = "flux.1-dev"
    n: int | None = Field(None, description="Number of images, 1-4")
    size: str | None = Field(None, description='"WxH" (floored to multiples of 16), an aspect ratio "W:H" '
                                               'at about one megapixel, or "auto" (1024x1024)')
    aspect_ratio: str | None = Field(None, description='"W:H", used when size is not given')
    response_format: Literal["url", "b64_json"] = "url"
    output_format: str | None = Field(None, description="png, jpeg or webp")
    output_compression: int | None = Field(None, description="Quality 1-100 for jpeg and webp")
    seed: int | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    negative_prompt: str | None = None
    true_cfg_scale: float | None = None
    enable_safety_checker: bool | None = None
    disable_safety_checker: bool | None = None


def floor_in_range(side: int) -> int:
    """A side floored to a multiple of 16 when within range; out of range it is left for
    validation to refuse with the value the caller sent."""
    if PRESETS.size_min <= side <= PRESETS.size_max:
        return side // PRESETS.size_multiple * PRESETS.size_multiple
    return side


def parse_size(size: str | None, aspect_ratio: str | None) -> dict[str, Any]:
    """Our image_size/width/height from OpenAI's `size` ("WxH", "W:H", "auto") or `aspect_ratio`."""
    text = (size or aspect_ratio or "auto").strip().lower()
    if text == "auto":
        return {}
    for separator, is_ratio in (("x", False), (":", True)):
        parts = text.split(separator)
        if len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
            width, height = (int(p) for p in parts)
            if is_ratio:
                width, height = size_at_area(width, height, ONE_MEGAPIXEL, PRESETS.size_multiple)
            return {"image_size": "custom", "width": floor_in_range(width), "height": floor_in_range(height)}
    raise FieldError("size", f'size must be "WxH" (e.g. "1024x768"), an aspect ratio "W:H" or "auto"; got {size!r}')


def shared_fields(values: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's fields mapped onto ours; None means "the preset default"."""
    safety = values.get("enable_safety_checker")
    if values.get("disable_safety_checker") is not None:
        safety = not values["disable_safety_checker"]
    return drop_none({
        "prompt": values.get("prompt"), "num_images": values.get("n"), "output_format": values.get("output_format"),
        "output_quality": values.get("output_compression"), "seed": values.get("seed"),
        "guidance_scale": values.get("guidance_scale"), "num_inference_steps": values.get("num_inference_steps"),
        "negative_prompt": values.get("negative_prompt"), "true_cfg_scale": values.get("true_cfg_scale"),
        "strength": values.get("strength"), "enable_safety_checker": safety,
        **parse_size(values.get("size"), values.get("aspect_ratio")),
    })


def images_response(result: GenerationResult, response_format: str, http: Request, settings: RestSettings) -> dict:
    data = []
    for image in result.images:
        item = {"revised_prompt": result.request.prompt}
        if response_format == "b64_json":
            item["b64_json"] = base64.b64encode(image.file.read_bytes()).decode()
        else:
            item["url"] = result_url(http, settings, image.result_id)
        data.append(item)
    return {
        "created": int(time.time()), "data": data, "output_format": result.request.output_format,
        "size": f"{result.request.width}x{result.request.height}", "seed": result.request.seed,
        "has_nsfw_concepts": result.has_nsfw_concepts, "model": result.model, "warnings": result.info["warnings"],
    }


async def _generate(playground, settings, mode: str, raw: dict, response_format: str, http: Request):
    try:
        result = await run_request(playground, mode, raw, http)
    except FieldError as error:
        param, _ = first_error(error, FIELD_NAMES)
        return openai_error(400, all_errors_message(error, FIELD_NAMES), param)
    except ServerBusy as error:
        return JSONResponse(status_code=503, content={"error": {"message": str(error), "type": "server_error",
                                                                "param": None, "code": "server_busy"}})
    except GenerationError as error:
        return openai_error(500, str(error), code="generation_failed")
    return images_response(result, response_format, http, settings)


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
        """Text-to-image with FLUX.1 [dev] (OpenAI `images.generate`)."""
        try:
            model = resolve_model(body.model)
            raw = shared_fields(body.model_dump())
        except UnknownModel as error:
            return openai_error(404, str(error), "model", "model_not_found")
        except FieldError as error:
            return openai_error(400, str(error), error.field)
        if model != "dev":
            return openai_error(400, f"{body.model} edits or varies images: use /v1/images/edits", "model")
        return await _generate(playground, settings, "text_to_image", raw, body.response_format, http)

    @router.post("/images/edits")
    async def edit_image(http: Request):
        """Edit an uploaded image (OpenAI `images.edit`, multipart): Kontext by default; with
        model flux.1-dev, image-to-image (`strength`); with flux.1-redux-dev, variations; with a
        `mask` (transparent where the image changes, as OpenAI's), inpainting."""
        form = await http.form()
        values = {key: numeric(value) for key, value in form.items() if not hasattr(value, "read")}
        uploads = [value for key, value in form.multi_items() if key in ("image", "image[]") and hasattr(value, "read")]
        try:
            model = resolve_model(str(values.get("model") or "flux.1-kontext-dev"))
            mode = EDIT_MODES[model]
            if not uploads:
                raise FieldError("image", "image is required: upload the image to edit")
            raw = shared_fields(values)
            if values.get("size") in (None, "auto"):
                raw["image_size"] = "match_input"
            raw["image"] = load_image_input(await uploads[0].read(), "image", settings.fetch)
            if hasattr(form.get("mask"), "read"):
                if model == "redux":
                    raise FieldError("mask", "mask: Redux makes variations of the whole image; inpaint with "
                                             "flux.1-dev or flux.1-kontext-dev")
                mode, raw["mask_image"] = "inpaint", repaint_mask(await form["mask"].read(), settings)
        except UnknownModel as error:
            return openai_error(404, str(error), "model", "model_not_found")
        except FieldError as error:
            return openai_error(400, str(error), error.field)
        return await _generate(playground, settings, mode, raw, str(values.get("response_format") or "url"), http)

    return router
