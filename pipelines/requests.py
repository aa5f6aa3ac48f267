"""Validated request dataclasses, built from raw field values with the ranges in `presets/`.

Every field is checked and every problem reported at once, each message naming the field
and what it accepts, before any accelerator time is spent. Absent or None values take the
preset default, so API callers may omit what they do not care about.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from PIL import Image

from pipelines.fields import FieldError, FieldReader
from pipelines.images import fit_size, kontext_size, size_at_area
from pipelines.masks import ASPECT_RATIOS, outpaint_canvas, outpaint_layout
from presets import PRESETS

# Redux and image-to-image outputs that follow the input are about this many pixels.
MATCH_INPUT_AREA = 1024 * 1024


class RequestError(ValueError):
    """One or more fields are invalid; `errors` says which and why."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(error.message for error in errors))


@dataclass(frozen=True)
class GenerationRequest:
    """Fields every mode shares. `seed` is -1 until `with_seed` resolves it."""

    mode: ClassVar[str]
    prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int
    output_format: str
    output_quality: int
    enable_safety_checker: bool
    live_preview: bool
    # Step caching for this request: "auto" (the acceleration profile's default) or a kind.
    step_cache: str = field(default="auto", kw_only=True)
    # LoRAs applied to the dev transformer, as ((name, weight), ...); none for Kontext.
    loras: tuple[tuple[str, float], ...] = field(default=(), kw_only=True)
    # What validation fixed on the way (an animated image's first frame used, ...).
    warnings: tuple[str, ...] = field(default=(), kw_only=True)

    def seeds(self) -> list[int]:
        """Image i of the request uses seed + i, so each image reproduces on its own."""
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True)
class TextToImageRequest(GenerationRequest):
    mode: ClassVar[str] = "text_to_image"
    negative_prompt: str
    true_cfg_scale: float


@dataclass(frozen=True)
class ImageToImageRequest(GenerationRequest):
    mode: ClassVar[str] = "image_to_image"
    image: Image.Image
    strength: float


@dataclass(frozen=True)
class KontextEditRequest(GenerationRequest):
    mode: ClassVar[str] = "kontext_edit"
    image: Image.Image
    negative_prompt: str
    true_cfg_scale: float


@dataclass(frozen=True)
class ReduxVariationRequest(GenerationRequest):
    mode: ClassVar[str] = "redux_variation"
    image: Image.Image
    prompt_embeds_scale: float
    pooled_prompt_embeds_scale: float


# The inpainting fields. Outpainting is inpainting on a padded canvas with the new area masked.
@dataclass(frozen=True)
class InpaintRequest(GenerationRequest):
    mode: ClassVar[str] = "inpaint"
    image: Image.Image
    mask: Image.Image  # "L", the image's size: white is repainted
    strength: float
    mask_blur: int


@dataclass(frozen=True)
class OutpaintRequest(InpaintRequest):
    mode: ClassVar[str] = "outpaint"
    expand_left: int
    expand_right: int
    expand_top: int
    expand_bottom: int
    aspect_ratio: str


@dataclass(frozen=True)
class ControlRequest(GenerationRequest):
    mode: ClassVar[str] = "control"
    image: Image.Image  # what the control map is made from (or, without preprocess, the map)
    control_type: str
    preprocess: bool
    canny_low_threshold: int
    canny_high_threshold: int
    # The edge or depth map, made from `image` when the request runs (depth needs a model).
    control_image: Image.Image | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class ServerOffer:
    """What the running server offers that validation depends on."""

    fill: bool = False  # FLUX.1-Fill-dev is configured: inpaint and outpaint run on it
    loras: frozenset[str] = frozenset()  # names of the loaded LoRAs
    # With a compiled transformer: the loaded LoRAs' ranks, and the most one request's may add up to.
    lora_ranks: Mapping[str, int] = field(default_factory=dict, hash=False)
    lora_rank_limit: int | None = None


REQUEST_TYPES = {
    cls.mode: cls
    for cls in (TextToImageRequest, ImageToImageRequest, KontextEditRequest, ReduxVariationRequest,
                InpaintRequest, OutpaintRequest, ControlRequest)
}
# Modes that run on the dev transformer, where LoRAs apply.
LORA_MODES = ("text_to_image", "image_to_image", "redux_variation", "inpaint", "outpaint", "control")


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """The request with seed -1 replaced by a random seed, so the seed used can be returned."""
    if request.seed != -1:
        return request
    last_base = PRESETS.field("seed").max - (request.num_images - 1)
    return replace(request, seed=secrets.randbelow(int(last_base) + 1))


def match_input_size(mode: str, width: int, height: int) -> tuple[int, int]:
    """The output size that follows an input image of (width, height) in this mode."""
    if mode == "kontext_edit":
        return kontext_size(width, height)
    if mode == "redux_variation":
        width, height = size_at_area(width, height, MATCH_INPUT_AREA, PRESETS.size_multiple)
    return fit_size(width, height, PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)


def variant_for(mode: str, raw: Mapping[str, Any], offer: ServerOffer) -> str | None:
    """Which preset variant a request's defaults come from: the Fill model, the control type."""
    if mode in ("inpaint", "outpaint") and offer.fill:
        return "fill"
    if mode == "control":
        kind = raw.get("control_type")
        return kind if kind in PRESETS.choices["control_type"].values else PRESETS.choices["control_type"].default
    return None


def parse_request(mode: str, raw: Mapping[str, Any], offer: ServerOffer = ServerOffer()) -> GenerationRequest:
    """The validated request for `mode`, or RequestError listing every invalid field."""
    fields = FieldReader(raw, mode, variant_for(mode, raw, offer))
    values: dict[str, Any] = {
        "prompt": fields.text("prompt", required=mode != "redux_variation"),
        "num_inference_steps": fields.number("num_inference_steps"),
        "guidance_scale": fields.number("guidance_scale"),
        "seed": fields.number("seed"),
        "num_images": fields.number("num_images"),
        "output_format": fields.choice("output_format"),
        "output_quality": fields.number("output_quality"),
        "enable_safety_checker": fields.flag("enable_safety_checker"),
        "live_preview": fields.flag("live_preview"),
        "step_cache": fields.choice("step_cache"),
    }
    if mode in LORA_MODES:
        usable = None if offer.fill and mode in ("inpaint", "outpaint") else offer.loras
        values["loras"] = fields.loras("loras", usable, offer.lora_ranks, offer.lora_rank_limit)
    MODE_FIELDS[mode](fields, values)
    if fields.errors:
        raise RequestError(fields.errors)
    return REQUEST_TYPES[mode](**values, warnings=tuple(fields.warnings))


def _sized(fields: FieldReader, values: dict) -> None:
    values["width"], values["height"] = fields.size(values.get("image"), lambda w, h: match_input_size(fields.mode, w, h))


def _text_to_image(fields: FieldReader, values: dict) -> None:
    values["negative_prompt"] = fields.text("negative_prompt", required=False)
    values["true_cfg_scale"] = fields.number("true_cfg_scale")
    _sized(fields, values)


def _image_to_image(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["strength"] = fields.number("strength")
    _sized(fields, values)


def _kontext_edit(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    _text_to_image(fields, values)


def _redux_variation(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["prompt_embeds_scale"] = fields.number("prompt_embeds_scale")
    values["pooled_prompt_embeds_scale"] = fields.number("pooled_prompt_embeds_scale")
    _sized(fields, values)


def _inpaint(fields: FieldReader, values: dict) -> None:
    image, painted = fields.edited_image("image")
    uploaded = fields.image("mask_image", as_mask=True, required=False)
    values["image"], values["strength"], values["mask_blur"] = image, fields.number("strength"), fields.number("mask_blur")
    _sized(fields, values)
    mask = uploaded if uploaded is not None else painted
    if image is None:
        return
    if mask is None:
        fields.fail("mask_image", "mask_image is required: paint over what to change, or upload a mask "
                                  "(white where the image is repainted)")
    elif mask.getextrema()[1] == 0:
        fields.fail("mask_image", "mask_image is empty: paint over what to change (white is repainted)")
    elif values["width"] and values["height"]:
        values["image"] = image.resize((values["width"], values["height"]), Image.Resampling.LANCZOS)
        values["mask"] = mask.resize((values["width"], values["height"]), Image.Resampling.BILINEAR)


def _outpaint(fields: FieldReader, values: dict) -> None:
    image = fields.image("image")
    margins = {side: fields.number(f"expand_{side}") for side in ("left", "right", "top", "bottom")}
    aspect = fields.choice("aspect_ratio")
    values.update({f"expand_{side}": value for side, value in margins.items()}, aspect_ratio=aspect)
    values["strength"], values["mask_blur"] = fields.number("strength"), fields.number("mask_blur")
    if None in margins.values():
        return
    if aspect != "none" and any(margins.values()):
        fields.fail("aspect_ratio", "give either aspect_ratio or expand_left/right/top/bottom, not both")
    elif aspect == "none" and not any(margins.values()):
        fields.fail("expand_left", "choose where to extend the image: expand_left, expand_right, expand_top or "
                                   "expand_bottom above 0, or a target aspect_ratio")
    elif image is not None:
        layout = outpaint_layout(image.size, (margins["left"], margins["top"], margins["right"], margins["bottom"]),
                                 ASPECT_RATIOS.get(aspect), PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)
        values["image"], values["mask"] = outpaint_canvas(image, layout)
        values["width"], values["height"] = layout.canvas


def _control(fields: FieldReader, values: dict) -> None:
    values["image"] = fields.image("image")
    values["control_type"] = fields.choice("control_type")
    values["preprocess"] = fields.flag("preprocess")
    values["canny_low_threshold"] = fields.number("canny_low_threshold")
    values["canny_high_threshold"] = fields.number("canny_high_threshold")
    low, high = values["canny_low_threshold"], values["canny_high_threshold"]
    if low is not None and high is not None and low > high:
        fields.fail("canny_low_threshold", f"canny_low_threshold must not be above canny_high_threshold ({high}), "
                                           f"got {low}")
    _sized(fields, values)


MODE_FIELDS = {
    "text_to_image": _text_to_image,
    "image_to_image": _image_to_image,
    "kontext_edit": _kontext_edit,
    "redux_variation": _redux_variation,
    "inpaint": _inpaint,
    "outpaint": _outpaint,
    "control": _control,
}
