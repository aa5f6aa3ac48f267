"""Oxen.ai's models as this server serves them: one declaration of each model's request fields
(`MODELS`), read by the request mapping (`playground_fields`), the checks made before anything
runs or is queued (`check_fields`) and the JSON Schema that `GET /api/ai/models/{id}` returns
(`model_object`). Oxen's names, defaults, choices and ranges (../shared/seeds/004, Oxen's model
pages); where a field is one of ours, its range is ours (presets/) narrowed to Oxen's.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pipelines.errors import FieldError
from pipelines.imaging.images import kontext_size, size_at_area
from pipelines.modes.readers import fit_to_range
from presets import CUSTOM, MATCH_INPUT, PRESETS, NumericField, format_number
from rest.common import MODEL_MODES, UnknownModel, resolve_model

# `image_size`: how many pixels FLUX.1 [dev] renders at each aspect ratio.
PIXEL_AREAS = {"optimize_for_quality": 1024 * 1024, "optimize_for_speed": 576 * 576}
DEV_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
KONTEXT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
MATCH_INPUT_IMAGE = "match_input_image"
NUMERIC_KINDS = {"integer": "int", "number": "float"}


@dataclass(frozen=True)
class OxenField:
    """One request field, in Oxen's words, and the playground field it sets."""

    name: str
    kind: str  # its JSON Schema type
    description: str
    ours: str | None = None  # None: read by the adapter (the output size)
    default: Any = None
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None  # Oxen's range; ours, where narrower, wins
    required: bool = False
    format: str | None = None
    to_ours: Callable[[Any], Any] = lambda value: value


def numeric_spec(field: OxenField, mode: str | None = None) -> NumericField:
    """The range a numeric field accepts: ours (presets/) within Oxen's, or Oxen's alone."""
    if field.ours in PRESETS.fields:
        spec = PRESETS.field(field.ours, mode)
        low, high = field.bounds or (spec.min, spec.max)
        return replace(spec, name=field.name, min=max(spec.min, low), max=min(spec.max, high))
    low, high = field.bounds
    return NumericField(field.name, field.name, NUMERIC_KINDS[field.kind], low, high, 1, field.default)


# -- the fields --------------------------------------------------------------------------------

PROMPT = OxenField("prompt", "string", "Prompt for generated image", "prompt", required=True)
NEGATIVE_PROMPT = OxenField("negative_prompt", "string", "Negative prompt for generated image", "negative_prompt",
                            default=" ")
ASPECT_RATIO = OxenField("aspect_ratio", "string", "Aspect ratio for the generated image", default="16:9",
                         choices=DEV_RATIOS)
IMAGE_SIZE = OxenField("image_size", "string", "Image size for the generated image", default="optimize_for_quality",
                       choices=tuple(PIXEL_AREAS))
STEPS = OxenField("num_inference_steps", "integer", "Number of denoising steps. Recommended range is 28-50, and "
                  "lower number of steps produce lower quality outputs, faster.", "num_inference_steps", 30,
                  bounds=(1, 50))
GUIDANCE = OxenField("guidance", "number", "Guidance for generated image. Lower values can give more realistic "
                     "images. Good values to try are 2, 2.5, 3 and 3.5", "guidance_scale", 3, bounds=(0, 10))
SEED = OxenField("seed", "integer", "Random seed. Set for reproducible generation", "seed")
OUTPUT_FORMAT = OxenField("output_format", "string", "Format of the output images", "output_format", "webp",
                          choices=("webp", "jpg", "png"), to_ours=lambda value: {"jpg": "jpeg"}.get(value, value))
OUTPUT_QUALITY = OxenField("output_quality", "integer", "Quality when saving the output images: 100 is best quality, "
                           "lower is smaller. Not relevant for .png outputs", "output_quality", 80, bounds=(0, 100))
DISABLE_SAFETY = OxenField("disable_safety_checker", "boolean", "Disable safety checker for generated images.",
                           "enable_safety_checker", False, to_ours=operator.not_)
N = OxenField("n", "integer", "Number of images to generate", "num_images", 1)
INPUT_IMAGE = OxenField("input_image", "string", "Image to use as reference (a URL or a data URI). Must be jpeg, "
                        "png, gif, or webp.", "image", required=True, format="uri")
# The endpoints' own fields, beside each model's.
RESPONSE_FORMAT = OxenField("response_format", "string", '"url" returns a hosted URL, "b64_json" the image bytes',
                            default="url", choices=("url", "b64_json"))
NUM_GENERATIONS = OxenField("num_generations", "integer", "How many generations to enqueue (seeds seed, seed+1, ...)",
                            default=1, bounds=(1, 4))


# -- the models --------------------------------------------------------------------------------

def dev_size(aspect_ratio: str, image_size: str) -> tuple[int, int]:
    """FLUX.1 [dev]'s output: the aspect ratio at `image_size`'s area, sides multiples of 16."""
    across, down = (int(part) for part in aspect_ratio.split(":"))
    return fit_to_range(*size_at_area(across, down, PIXEL_AREAS[image_size], PRESETS.size_multiple))


def kontext_ratio_size(aspect_ratio: str, image_size: str | None = None) -> tuple[int, int] | None:
    """Kontext's output: the trained resolution nearest the aspect ratio; None follows the input."""
    if aspect_ratio == MATCH_INPUT_IMAGE:
        return None
    return kontext_size(*(int(part) for part in aspect_ratio.split(":")))


@dataclass(frozen=True)
class OxenModel:
    key: str  # ours: dev, kontext
    id: str  # Oxen's model id
    display_name: str
    summary: str
    endpoint: str  # the synchronous route that runs it
    fields: tuple[OxenField, ...]
    size: Callable[[str, str], tuple[int, int] | None]  # (aspect_ratio, image_size) -> (width, height)

    @property
    def mode(self) -> str:
        return MODEL_MODES[self.key]

    @property
    def takes_image(self) -> bool:
        return any(field.name == INPUT_IMAGE.name for field in self.fields)

    @property
    def field_names(self) -> dict[str, str]:
        """Our field names in Oxen's words, for the playground's error messages."""
        return {**{field.ours: field.name for field in self.fields if field.ours},
                "width": "aspect_ratio", "height": "aspect_ratio"}


MODELS = {model.key: model for model in (
    OxenModel("dev", "flux-1-dev", "FLUX.1 [dev]", "Open text-to-image with editing tools", "/images/generate", (
        replace(PROMPT, default="A beautiful landscape painting of a serene lake with mountains in the background"),
        NEGATIVE_PROMPT, ASPECT_RATIO, IMAGE_SIZE, STEPS, GUIDANCE, SEED, OUTPUT_FORMAT, OUTPUT_QUALITY,
        DISABLE_SAFETY, N), dev_size),
    OxenModel("kontext", "flux-kontext-dev", "FLUX.1-Kontext [dev]", "In-context image editing model", "/images/edit", (
        replace(PROMPT, description="Text description of what you want to generate, or the instruction on how to "
                                    "edit the given image."),
        INPUT_IMAGE, replace(ASPECT_RATIO, choices=(*KONTEXT_RATIOS, MATCH_INPUT_IMAGE)),
        replace(STEPS, description="Number of inference steps", default=28, bounds=(4, 50)),
        replace(GUIDANCE, description="Guidance scale for generation", default=2.5),
        replace(SEED, description="Random seed for reproducible generation. Leave blank for random."),
        replace(OUTPUT_FORMAT, description="Output image format"), OUTPUT_QUALITY,
        replace(DISABLE_SAFETY, description="Disable NSFW safety checker"), N), kontext_ratio_size),
)}


class ModelNotFound(LookupError):
    def __init__(self, name: str):
        served = ", ".join(model.id for model in MODELS.values())
        super().__init__(f"Model not found: {name} (this server serves {served} and their hub ids)")


def oxen_model(name: Any) -> OxenModel:
    """The model for any of its names (Oxen's id, the hub id, ...); ModelNotFound otherwise."""
    try:
        return MODELS[resolve_model(str(name))]
    except (UnknownModel, KeyError):
        raise ModelNotFound(name) from None


# -- checking and mapping a request ------------------------------------------------------------

def field_problem(field: OxenField, value: Any, mode: str | None) -> FieldError | None:
    """What is wrong with a value Oxen's schema would refuse (None: nothing, or left to the playground)."""
    if field.choices and value not in field.choices:
        return FieldError(field.name, f"{field.name} must be one of {', '.join(field.choices)}; got {value!r}")
    if field.kind == "boolean" and not isinstance(value, bool):
        return FieldError(field.name, f"{field.name} must be true or false, got {value!r}")
    if field.kind in NUMERIC_KINDS:
        return number_problem(field.name, value, numeric_spec(field, mode))
    return None


def number_problem(name: str, value: Any, spec: NumericField) -> FieldError | None:
    """A value that is not a number of the spec's kind, or is out of its range."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    whole = number and (spec.kind == "float" or float(value).is_integer())
    if whole and spec.min <= value <= spec.max:
        return None
    shown = format_number(value) if whole else repr(value)
    return FieldError(name, f"{name} must be {spec.describe_range()}, got {shown}")


def given_or_default(field: OxenField, values: Mapping[str, Any]) -> Any:
    """The value sent, else the field's default (a required field has none: the playground says so)."""
    value = values.get(field.name)
    return field.default if value is None and not field.required else value


def checked(fields: tuple[OxenField, ...], values: Mapping[str, Any], mode: str | None = None) -> dict[str, Any]:
    """Each field's value or default; FieldError naming every field out of its choices or range."""
    filled = {field.name: given_or_default(field, values) for field in fields}
    problems = [field_problem(field, filled[field.name], mode) for field in fields if filled[field.name] is not None]
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise FieldError.collect(problems)
    return filled


def playground_fields(model: OxenModel, values: Mapping[str, Any]) -> dict[str, Any]:
    """An Oxen request as the playground's raw fields (the input image still as sent); FieldError
    for what Oxen's schema refuses."""
    filled = checked(model.fields, values, model.mode)
    raw = {field.ours: field.to_ours(filled[field.name]) for field in model.fields
           if field.ours and filled[field.name] is not None}
    return raw | size_fields(model.size(filled["aspect_ratio"], filled.get("image_size")))


def size_fields(size: tuple[int, int] | None) -> dict[str, Any]:
    """Our size fields for an output size; None follows the input image."""
    if size is None:
        return {"image_size": MATCH_INPUT}
    return {"image_size": CUSTOM, "width": size[0], "height": size[1]}


def endpoint_value(field: OxenField, values: Mapping[str, Any]) -> Any:
    """An endpoint field's value (response_format, num_generations), checked, or its default."""
    return checked((field,), values)[field.name]


# -- the model object --------------------------------------------------------------------------

def property_schema(field: OxenField, order: int, mode: str) -> dict[str, Any]:
    schema = {"type": field.kind, "title": field.name.replace("_", " ").title(), "description": field.description,
              "x-order": order}
    if field.default is not None:
        schema["default"] = field.default
    if field.choices:
        schema["enum"] = list(field.choices)
    if field.kind in NUMERIC_KINDS:
        spec = numeric_spec(field, mode)
        cast = int if field.kind == "integer" else float
        schema.update(minimum=cast(spec.min), maximum=cast(spec.max))
    if field.format:
        schema["format"] = field.format
    return schema


def request_schema(model: OxenModel) -> dict[str, Any]:
    """The JSON Schema of the model's request, from its field declarations."""
    return {"type": "object", "title": "Input", "required": [field.name for field in model.fields if field.required],
            "properties": {field.name: property_schema(field, order, model.mode)
                           for order, field in enumerate(model.fields)}}


def model_object(model: OxenModel) -> dict[str, Any]:
    """Oxen's model object; pricing is 0 on your own hardware."""
    inputs = ["text", "image"] if model.takes_image else ["text"]
    schema = request_schema(model)
    return {"id": model.id, "name": model.id, "object": "model", "created": 0, "owned_by": "black-forest-labs",
            "display_name": model.display_name, "description": model.summary, "summary": model.summary,
            "model_type": "base", "endpoint": model.endpoint, "capabilities": {"input": inputs, "output": ["image"]},
            "pricing": {"method": "per_image", "cost_per_image": 0.0}, "fine_tuning": None, "deployments": [],
            "developer": {"name": "Black Forest Labs", "logo": None}, "source_model": None, "image_url": None,
            "released_at": None, "json_request_schema": schema, "request_schema": schema}


# -- the size table ----------------------------------------------------------------------------

def size_cell(size: tuple[int, int] | None) -> str:
    return f"{size[0]}×{size[1]}" if size else "—"


def size_table() -> str:
    """Each aspect ratio's output size, as a markdown table (the docs show it; a test compares)."""
    dev, kontext = MODELS["dev"], MODELS["kontext"]
    lines = [f"| `aspect_ratio` | {dev.id} `optimize_for_quality` | {dev.id} `optimize_for_speed` | {kontext.id} |",
             "|---|---|---|---|"]
    for ratio in dict.fromkeys(DEV_RATIOS + KONTEXT_RATIOS):
        dev_cells = [size_cell(dev.size(ratio, image_size) if ratio in DEV_RATIOS else None)
                     for image_size in PIXEL_AREAS]
        lines.append(f"| {ratio} | {' | '.join(dev_cells)} | {size_cell(kontext.size(ratio))} |")
    return "\n".join(lines)
