"""Validated request dataclasses, built from raw field values with the ranges in `presets/`.

Every field is checked and every problem reported at once, each message naming the field
and what it accepts, before any accelerator time is spent. Absent or None values take the
preset default, so API callers may omit what they do not care about.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from PIL import Image

from pipelines.images import (
    InputImageError,
    fit_size,
    kontext_size,
    load_input_image,
    size_at_area,
)
from presets import CUSTOM, PRESETS, format_number

# Redux and image-to-image outputs that follow the input are about this many pixels.
MATCH_INPUT_AREA = 1024 * 1024


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


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


REQUEST_TYPES = {
    cls.mode: cls
    for cls in (TextToImageRequest, ImageToImageRequest, KontextEditRequest, ReduxVariationRequest)
}


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """The request with seed -1 replaced by a random seed, so the seed used can be returned."""
    if request.seed != -1:
        return request
    last_base = PRESETS.field("seed").max - (request.num_images - 1)
    return replace(request, seed=secrets.randbelow(int(last_base) + 1))


class _FieldReader:
    """Reads raw values one field at a time, collecting errors instead of stopping at the first."""

    def __init__(self, raw: Mapping[str, Any], mode: str):
        self.raw = raw
        self.mode = mode
        self.errors: list[FieldError] = []
        self.warnings: list[str] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def number(self, name: str) -> Any:
        spec = PRESETS.field(name)
        value = self.raw.get(name)
        if value is None:
            default = PRESETS.default(name, self.mode)
            return int(default) if spec.kind == "int" else float(default)
        expected = f"{name} must be {spec.describe_range()}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"{expected}, got {value!r}")
            return None
        if not math.isfinite(value):
            self.fail(name, f"{expected}, got {value}")
            return None
        if spec.kind == "int" and value != int(value):
            self.fail(name, f"{expected} (a whole number), got {value}")
            return None
        if not spec.min <= value <= spec.max:
            self.fail(name, f"{expected}, got {format_number(value)}")
            return None
        return int(value) if spec.kind == "int" else float(value)

    def text(self, name: str, required: bool) -> str:
        value = self.raw.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            self.fail(name, f"{name} must be text, got {type(value).__name__}")
            return ""
        if required and not value.strip():
            self.fail(name, f"{name} is required: describe the image you want")
        if len(value) > PRESETS.max_prompt_chars:
            self.fail(
                name,
                f"{name} must be at most {PRESETS.max_prompt_chars} characters, got {len(value)}",
            )
        return value

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.raw.get(name)
        if value is None:
            return default
        if value not in allowed:
            self.fail(name, f"{name} must be one of {', '.join(allowed)}; got {value!r}")
            return default
        return value

    def image(self, name: str = "image") -> Image.Image | None:
        value = self.raw.get(name)
        if value is None or value == "":
            self.fail(name, f"{name} is required: upload an image")
            return None
        try:
            image, warnings = load_input_image(value, name, PRESETS.input_min_side, PRESETS.input_max_pixels)
        except InputImageError as error:
            self.fail(error.field, str(error))
            return None
        self.warnings.extend(warnings)
        return image

    def flag(self, name: str) -> bool:
        value = self.raw.get(name)
        if value is None:
            return PRESETS.flags[name].default
        if not isinstance(value, bool):
            self.fail(name, f"{name} must be true or false, got {value!r}")
            return PRESETS.flags[name].default
        return value

    def side(self, name: str) -> int | None:
        value = self.number(name)
        if value is not None and value % PRESETS.size_multiple:
            self.fail(name, f"{name} must be a multiple of {PRESETS.size_multiple}, got {value}")
            return None
        return value

    def size(self, image: Image.Image | None) -> tuple[int, int]:
        """(width, height) of the output from `image_size` and, for custom, `width`/`height`."""
        default = PRESETS.modes[self.mode].image_size
        choice = self.choice("image_size", PRESETS.size_choices(self.mode), default)
        if choice == CUSTOM:
            width, height = self.side("width"), self.side("height")
            return (width or 0, height or 0)
        if choice in PRESETS.image_sizes:
            return PRESETS.image_sizes[choice]
        if image is None:  # match_input without a usable image: already reported
            return (0, 0)
        return match_input_size(self.mode, *image.size)


def match_input_size(mode: str, width: int, height: int) -> tuple[int, int]:
    """The output size that follows an input image of (width, height) in this mode."""
    if mode == "kontext_edit":
        return kontext_size(width, height)
    if mode == "redux_variation":
        width, height = size_at_area(width, height, MATCH_INPUT_AREA, PRESETS.size_multiple)
    return fit_size(width, height, PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)


def parse_request(mode: str, raw: Mapping[str, Any]) -> GenerationRequest:
    """The validated request for `mode`, or RequestError listing every invalid field."""
    fields = _FieldReader(raw, mode)
    values: dict[str, Any] = {
        "prompt": fields.text("prompt", required=mode != "redux_variation"),
        "num_inference_steps": fields.number("num_inference_steps"),
        "guidance_scale": fields.number("guidance_scale"),
        "seed": fields.number("seed"),
        "num_images": fields.number("num_images"),
        "output_format": fields.choice(
            "output_format", PRESETS.output_formats, PRESETS.default_output_format
        ),
        "output_quality": fields.number("output_quality"),
        "enable_safety_checker": fields.flag("enable_safety_checker"),
        "live_preview": fields.flag("live_preview"),
    }
    if mode in ("text_to_image", "kontext_edit"):
        values["negative_prompt"] = fields.text("negative_prompt", required=False)
        values["true_cfg_scale"] = fields.number("true_cfg_scale")
    if mode != "text_to_image":
        values["image"] = fields.image("image")
    if mode == "image_to_image":
        values["strength"] = fields.number("strength")
    if mode == "redux_variation":
        values["prompt_embeds_scale"] = fields.number("prompt_embeds_scale")
        values["pooled_prompt_embeds_scale"] = fields.number("pooled_prompt_embeds_scale")
    values["width"], values["height"] = fields.size(values.get("image"))
    if fields.errors:
        raise RequestError(fields.errors)
    return REQUEST_TYPES[mode](**values, warnings=tuple(fields.warnings))
