"""Replicate's three FLUX.1 [dev] models, each one's inputs declared once, in one table.

An input carries Replicate's name, type, default and description, and the playground field
it maps onto. Both the mapping of a prediction's `input` onto `Playground.parse`'s raw fields
and the version's OpenAPI schema read the table. Numeric ranges are the playground's
(presets/), read through the field an input maps onto: they hold Replicate's defaults and
most of its ranges (guidance goes to 20 here; output_quality starts at 1, prompt_strength at 0.01).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from PIL import Image

from pipelines.errors import FieldError
from pipelines.imaging.images import fit_size, kontext_size, size_at_area, upright_size
from presets import CUSTOM, MATCH_INPUT, PRESETS
from rest.common import drop_none, go_fast_step_cache

OWNER = "black-forest-labs"
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
MATCH_INPUT_IMAGE = "match_input_image"
MEGAPIXELS = MappingProxyType({"1": 1024 * 1024, "0.25": 512 * 512})  # Replicate's choice -> pixels
OUTPUT_FORMATS = MappingProxyType({"webp": "webp", "jpg": "jpeg", "png": "png"})  # Replicate's name -> ours
# The Cog conventions the schemas follow (x-order, Input and Output components); the client reads it.
COG_VERSION = "0.16.0"
JSON_TYPES = {"uri": "string"}  # every other kind is its JSON schema type already


@dataclass(frozen=True)
class Input:
    name: str  # Replicate's
    kind: str  # "string", "integer", "number", "boolean", or "uri" (an image)
    description: str
    default: Any = None
    field: str | None = None  # the playground field it maps onto; its range is that field's
    choices: tuple[str, ...] = ()
    required: bool = False
    aliases: tuple[str, ...] = ()  # other names it is accepted under
    convert: Callable[[Any], Any] | None = None  # Replicate's value -> the field's


def prompt(description: str) -> Input:
    return Input("prompt", "string", description, field="prompt", required=True)


def image(name: str, description: str, required: bool = True, aliases: tuple[str, ...] = ()) -> Input:
    return Input(name, "uri", description, field="image", required=required, aliases=aliases)


def aspect_ratio(default: str, choices: tuple[str, ...] = ASPECT_RATIOS) -> Input:
    return Input("aspect_ratio", "string", "Aspect ratio for the generated image", default, choices=choices)


def steps(default: int) -> Input:
    return Input("num_inference_steps", "integer", "Number of denoising steps; fewer are faster, more are more "
                 "detailed", default, field="num_inference_steps")


def guidance(default: float) -> Input:
    return Input("guidance", "number", "Guidance for generated image", default, field="guidance_scale")


NUM_OUTPUTS = Input("num_outputs", "integer", "Number of outputs to generate", 1, field="num_images")
SEED = Input("seed", "integer", "Random seed. Set for reproducible generation", field="seed")
MEGAPIXELS_INPUT = Input("megapixels", "string", "Approximate number of megapixels for generated image", "1",
                         choices=tuple(MEGAPIXELS))
OUTPUT_FORMAT = Input("output_format", "string", "Format of the output images", "webp", field="output_format",
                      choices=tuple(OUTPUT_FORMATS), convert=OUTPUT_FORMATS.get)
OUTPUT_QUALITY = Input("output_quality", "integer", "Quality when saving the output images; not relevant for "
                       ".png outputs", 80, field="output_quality")
SAFETY = Input("disable_safety_checker", "boolean", "Disable safety checker for generated images.", False,
               field="enable_safety_checker", convert=operator.not_)
# go_fast picks the server's own acceleration (its step caching profile); off turns caching off.
GO_FAST = Input("go_fast", "boolean", "Run faster predictions with the server's step caching (its acceleration "
                "profile); disable for exact, uncached steps", True, field="step_cache",
                convert=go_fast_step_cache)


def megapixel_size(aspect: tuple[int, int], megapixels: str | None) -> tuple[int, int]:
    """`aspect` at the area asked for, sides multiples of 16 within the playground's range."""
    width, height = size_at_area(*aspect, MEGAPIXELS[megapixels or "1"], PRESETS.size_multiple)
    return fit_size(width, height, PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)


def kontext_resolution(aspect: tuple[int, int], megapixels: str | None) -> tuple[int, int]:
    """Kontext's trained resolution nearest `aspect` (Replicate's Kontext has no megapixels)."""
    return kontext_size(*aspect)


@dataclass(frozen=True)
class ReplicateModel:
    name: str
    mode: str  # the playground mode it runs
    description: str
    inputs: tuple[Input, ...]
    output_is_list: bool  # flux-dev and Redux answer a list of URIs, Kontext one URI
    output_size: Callable[[tuple[int, int], str | None], tuple[int, int]] = megapixel_size
    image_mode: str | None = None  # the mode it runs when its optional image is given
    follows_image: bool = False  # with an image, the output takes the image's aspect

    @property
    def full_name(self) -> str:
        return f"{OWNER}/{self.name}"

    @property
    def image_input(self) -> Input:
        return next(spec for spec in self.inputs if spec.kind == "uri")

    @property
    def field_names(self) -> dict[str, str]:
        """Our field names in this model's vocabulary, for error messages."""
        names = {spec.field: spec.name for spec in self.inputs if spec.field}
        return {**names, "width": "aspect_ratio", "height": "aspect_ratio", "image_size": "aspect_ratio"}


MODELS: Mapping[str, ReplicateModel] = MappingProxyType({model.full_name: model for model in (
    ReplicateModel(
        "flux-dev", "text_to_image", "FLUX.1 [dev]: text-to-image, or image-to-image with an image",
        (prompt("Prompt for generated image"), aspect_ratio("1:1"),
         image("image", "Input image for image to image mode. The aspect ratio of your output will match this "
               "image", required=False),
         Input("prompt_strength", "number", "Prompt strength when using img2img. 1.0 corresponds to full "
               "destruction of information in image", 0.8, field="strength"),
         NUM_OUTPUTS, steps(28), guidance(3), SEED, OUTPUT_FORMAT, OUTPUT_QUALITY, SAFETY, GO_FAST,
         MEGAPIXELS_INPUT),
        output_is_list=True, image_mode="image_to_image", follows_image=True,
    ),
    ReplicateModel(
        "flux-kontext-dev", "kontext_edit", "FLUX.1 Kontext [dev]: edit an image by instruction",
        (prompt("Text description of what you want to generate, or the instruction on how to edit the given "
                "image."),
         image("input_image", "Image to use as reference. Must be jpeg, png, gif, or webp.", aliases=("image",)),
         aspect_ratio(MATCH_INPUT_IMAGE, (MATCH_INPUT_IMAGE, *ASPECT_RATIOS)),
         steps(30), guidance(2.5), SEED, OUTPUT_FORMAT, OUTPUT_QUALITY, SAFETY, GO_FAST),
        output_is_list=False, output_size=kontext_resolution,
    ),
    ReplicateModel(
        "flux-redux-dev", "redux_variation", "FLUX.1 Redux [dev]: variations of an image",
        (image("redux_image", "Input image to condition your output on. This replaces prompt for FLUX.1 Redux "
               "models", aliases=("image",)),
         aspect_ratio("1:1"), NUM_OUTPUTS, steps(28), guidance(3), SEED, OUTPUT_FORMAT, OUTPUT_QUALITY, SAFETY,
         GO_FAST, MEGAPIXELS_INPUT),
        output_is_list=True,
    ),
)})


# -- a prediction's input -> the playground's raw fields -----------------------------------

def given_value(spec: Input, given: Mapping[str, Any]) -> Any:
    """The input's value under its name or an alias; its default when not given."""
    return next((given[key] for key in (spec.name, *spec.aliases) if given.get(key) is not None), spec.default)


def kind_problem(spec: Input, value: Any) -> str | None:
    """What the playground cannot check itself: Replicate's booleans and choices."""
    if value is None:
        return None
    if spec.kind == "boolean" and not isinstance(value, bool):
        return f"{spec.name} must be true or false, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name} must be one of {', '.join(spec.choices)}; got {value!r}"
    return None


def declared_values(model: ReplicateModel, given: Mapping[str, Any]) -> dict[str, Any]:
    """Each declared input's value (given or default); FieldError lists every bad kind."""
    values = {spec.name: given_value(spec, given) for spec in model.inputs}
    problems = [FieldError(spec.name, problem) for spec in model.inputs
                if (problem := kind_problem(spec, values[spec.name])) is not None]
    if problems:
        raise FieldError.collect(problems)
    return values


def ignored_inputs(model: ReplicateModel, given: Mapping[str, Any]) -> list[str]:
    """Given inputs the model does not have (Replicate ignores them too)."""
    known = {name for spec in model.inputs for name in (spec.name, *spec.aliases)}
    return sorted(set(given) - known)


def ratio(text: str) -> tuple[int, int]:
    width, height = text.split(":")
    return int(width), int(height)


def size_fields(model: ReplicateModel, values: Mapping[str, Any], image: Image.Image | None) -> dict[str, Any]:
    """Our image_size/width/height from aspect_ratio, megapixels and, where the output follows
    it, the input image."""
    chosen = values.get("aspect_ratio")
    if chosen == MATCH_INPUT_IMAGE:
        return {"image_size": MATCH_INPUT}
    aspect = upright_size(image) if image is not None and model.follows_image else ratio(chosen)
    width, height = model.output_size(aspect, values.get("megapixels"))
    return {"image_size": CUSTOM, "width": width, "height": height}


def raw_fields(model: ReplicateModel, values: Mapping[str, Any], image: Image.Image | None) -> tuple[str, dict]:
    """(the mode to run, its raw fields) from the declared values and the loaded input image."""
    raw = {spec.field: spec.convert(values[spec.name]) if spec.convert else values[spec.name]
           for spec in model.inputs if spec.field and spec.kind != "uri" and values[spec.name] is not None}
    raw["image"] = image
    raw.update(size_fields(model, values, image))
    mode = model.image_mode if image is not None and model.image_mode else model.mode
    return mode, drop_none(raw)


# -- the version's OpenAPI schema ------------------------------------------------------------

def property_schema(spec: Input, order: int, mode: str) -> dict[str, Any]:
    schema = {"type": JSON_TYPES.get(spec.kind, spec.kind), "title": spec.name.replace("_", " ").title(),
              "description": spec.description, "x-order": order}
    if spec.kind == "uri":
        schema["format"] = "uri"
    if spec.default is not None:
        schema["default"] = spec.default
    if spec.choices:
        schema["enum"] = list(spec.choices)
    if spec.field in PRESETS.fields:
        field = PRESETS.field(spec.field, mode)
        schema["minimum"], schema["maximum"] = field.min, field.max
    return schema


def openapi_schema(model: ReplicateModel) -> dict[str, Any]:
    """The model's inputs and output as Cog describes them."""
    uri = {"type": "string", "format": "uri"}
    output = {"type": "array", "items": uri} if model.output_is_list else uri
    properties = {spec.name: property_schema(spec, order, model.mode) for order, spec in enumerate(model.inputs)}
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": {},
            "components": {"schemas": {
                "Input": {"type": "object", "title": "Input", "properties": properties,
                          "required": [spec.name for spec in model.inputs if spec.required]},
                "Output": {**output, "title": "Output"}}}}


def version_id(model: ReplicateModel) -> str:
    """A version is its schema: the id changes when the declared inputs (or our ranges) do."""
    return hashlib.sha256(json.dumps(openapi_schema(model), sort_keys=True).encode()).hexdigest()


VERSION_IDS: Mapping[str, str] = MappingProxyType({name: version_id(model) for name, model in MODELS.items()})


def find_model(owner: str, name: str) -> ReplicateModel | None:
    return MODELS.get(f"{owner}/{name}".lower())


def find_version(reference: str) -> ReplicateModel | None:
    """The model a prediction's `version` names: a version id, "owner/name" or "owner/name:id"."""
    name, _, version = reference.partition(":")
    if "/" in name:
        model = MODELS.get(name.lower())
        return model if model is not None and version in ("", VERSION_IDS[model.full_name]) else None
    return next((MODELS[full] for full, known in VERSION_IDS.items() if known == reference), None)
