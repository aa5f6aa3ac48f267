"""Reading a request's raw values one field at a time, against the ranges in `presets/`.

Every problem is collected rather than raised, so a request hears about all its bad fields at
once, each message naming the field and what it accepts. Absent or None values take the
preset default: the variant's (the model or control type the request runs with), else the
mode's, else the field's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image, ImageChops

from pipelines.errors import FieldError
from pipelines.imaging.images import load_input_image
from presets import CUSTOM, PRESETS, format_number

# An image editor's value (Gradio's ImageEditor): the uploaded image and the painted layers.
EDITOR_KEYS = ("background", "layers", "composite")


def is_editor_value(value: Any) -> bool:
    return isinstance(value, Mapping) and any(key in value for key in EDITOR_KEYS)


class FieldReader:
    """Reads raw values for one mode (and variant), collecting errors and warnings."""

    def __init__(self, raw: Mapping[str, Any], mode: str, variant: str | None = None,
                 match_input: Callable[[int, int], tuple[int, int]] | None = None):
        self.raw = raw
        self.mode = mode
        self.variant = variant
        self.match_input = match_input  # (width, height) of an input -> the output size that follows it
        self.errors: list[FieldError] = []
        self.warnings: list[str] = []
        # The input images as the caller gave them (decoded, before any resizing or canvas), by
        # field: stored with the results, so that restoring a result restores its inputs too.
        self.inputs: dict[str, Image.Image] = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def given(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def number(self, name: str) -> Any:
        spec = PRESETS.field(name, self.mode)
        value = self.raw.get(name)
        if value is None:
            default = PRESETS.default(name, self.mode, self.variant)
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

    def choice(self, name: str, allowed: tuple[str, ...] | None = None, default: str | None = None) -> str:
        """One of `allowed` (the preset choice's values unless given)."""
        if allowed is None:
            allowed, default = PRESETS.choices[name].values, PRESETS.choices[name].default
        value = self.raw.get(name)
        if value is None:
            return default
        if value not in allowed:
            self.fail(name, f"{name} must be one of {', '.join(allowed)}; got {value!r}")
            return default
        return value

    def image(self, name: str = "image", as_mask: bool = False, required: bool = True,
              value: Any = None) -> Image.Image | None:
        """The image in field `name` (or `value`, a part of that field's value)."""
        value = self.raw.get(name) if value is None else value
        if value is None or value == "":
            if required:
                self.fail(name, f"{name} is required: upload an image")
            return None
        try:
            image, warnings = load_input_image(value, name, PRESETS.input_min_side, PRESETS.input_max_pixels,
                                               as_mask=as_mask)
        except FieldError as error:
            self.fail(error.field, str(error))
            return None
        self.warnings.extend(warnings)
        if value is self.raw.get(name):  # the whole field, not a part of an editor's value
            self.inputs[name] = image
        return image

    def edited_image(self, name: str = "image") -> tuple[Image.Image | None, Image.Image | None]:
        """An image and the mask painted on it: from an image editor's value (the uploaded
        background and the union of the painted layers), or a plain image and no mask."""
        value = self.raw.get(name)
        if not is_editor_value(value):
            return self.image(name), None
        image = self.image(name, value=value.get("background") or value.get("composite") or "")
        if image is not None:
            self.inputs[name] = image
        layers = [layer for layer in value.get("layers") or [] if layer]
        masks = [self.image(name, as_mask=True, value=layer) for layer in layers]
        masks = [mask for mask in masks if mask is not None]
        if image is None or not masks:
            return image, None
        painted = masks[0]
        for mask in masks[1:]:
            painted = ImageChops.lighter(painted, mask.resize(painted.size))
        self.inputs["mask_image"] = painted  # an uploaded mask, read after this, replaces it
        return image, painted

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
            self.fail(name, f"{name} must be a multiple of {PRESETS.size_multiple}, got {value} (each side: "
                            f"{PRESETS.size_min} to {PRESETS.size_max})")
            return None
        return value

    def size(self, image: Image.Image | None) -> tuple[int, int]:
        """(width, height) of the output. The most specific wins: `width` and `height`, when
        given, over any `image_size` (which then need not say "custom"); else the preset, or
        with match_input the size that follows the input image."""
        default = PRESETS.modes[self.mode].image_size
        choice = self.choice("image_size", PRESETS.size_choices(self.mode), default)
        given = [name for name in ("width", "height") if self.raw.get(name) is not None]
        if len(given) == 1:
            missing = "height" if given == ["width"] else "width"
            self.fail(missing, f"{missing} is required with {given[0]}: give both, or neither to use image_size")
            return (0, 0)
        if given or choice == CUSTOM:
            width, height = self.side("width"), self.side("height")
            return (width or 0, height or 0)
        if choice in PRESETS.image_sizes:
            return PRESETS.image_sizes[choice]
        if image is None:  # match_input without a usable image: already reported
            return (0, 0)
        return self.match_input(*image.size)

    def loras(self, name: str, loaded: frozenset[str] | None, ranks: Mapping[str, int] | None = None,
              rank_limit: int | None = None) -> tuple[tuple[str, float], ...]:
        """LoRAs to apply, as ((name, weight), ...): from "name" or "name:weight" items, comma
        separated, or a list of [name, weight] pairs or {"name", "weight"} objects. Each must
        name a loaded LoRA (`loaded`; None: LoRAs are not available in this mode), and their
        `ranks` may add up to `rank_limit` at most (a compiled transformer's LoRA slot)."""
        value = self.raw.get(name)
        if value in (None, "", []):
            return ()
        limits = PRESETS.loras
        # Messages say what is wrong without naming the field: gradio_client, the page and the
        # REST APIs each show the field's name beside them.
        try:
            pairs = parse_lora_list(value)
        except ValueError as error:
            self.fail(name, str(error))
            return ()
        if loaded is None:
            self.fail(name, "cannot be used here: LoRAs apply to the FLUX.1-dev transformer, which this request "
                            "does not run on")
            return ()
        problems = []
        if len(pairs) > limits.max_per_request:
            problems.append(f"at most {limits.max_per_request} LoRAs per request, got {len(pairs)}")
        names = [lora for lora, _ in pairs]
        if len(set(names)) < len(names):
            problems.append("each LoRA may be named once")
        unknown = [lora for lora in names if lora not in loaded]
        if unknown:
            problems.append(not_loaded(unknown, loaded))
        total_rank = sum((ranks or {}).get(lora, 0) for lora in set(names))
        if rank_limit is not None and total_rank > rank_limit:
            problems.append(f"the ranks of {', '.join(map(repr, names))} add up to {total_rank}; on this server's "
                            f"compiled transformer a request's LoRAs may add up to rank {rank_limit} (--lora-rank)")
        for lora, weight in pairs:
            if not (math.isfinite(weight) and limits.min_weight <= weight <= limits.max_weight):
                problems.append(f"the weight of {lora!r} must be a number from {format_number(limits.min_weight)} "
                                f"to {format_number(limits.max_weight)}, got {weight:g}")
        if problems:
            self.fail(name, "; ".join(problems))
            return ()
        return tuple(pairs)


def not_loaded(unknown: list[str], loaded: frozenset[str]) -> str:
    """What to do about LoRA names that are not loaded, for a page user and an API caller alike."""
    one = len(unknown) == 1
    return (f"{', '.join(map(repr, unknown))} {'is' if one else 'are'} not loaded: load {'it' if one else 'them'} "
            f"in the LoRAs tab or with /load_lora (loaded: {', '.join(sorted(loaded)) or 'none yet'})")


def parse_lora_list(value: Any) -> list[tuple[str, float]]:
    """(name, weight) pairs from "a, b:0.5", [["a", 1], ["b", 0.5]] or [{"name": "a", "weight": 1}]."""
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f'give LoRAs as "name:weight, name2:weight", got {type(value).__name__}')
    pairs = []
    for item in items:
        if isinstance(item, str):
            name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
            pairs.append((name.strip(), _weight(weight, item)))
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            pairs.append((item["name"], _weight(item.get("weight", item.get("scale", 1.0)), item)))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            pairs.append((item[0], _weight(item[1], item)))
        else:
            raise ValueError(f'each LoRA is "name" or "name:weight", got {item!r}')
    return pairs


def _weight(value: Any, item: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"the weight in {item!r} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the weight in {item!r} must be a number") from None


def format_loras(loras: tuple[tuple[str, float], ...]) -> str:
    """The request's LoRAs as the text the LoRA field takes back: "a:1, b:0.5"."""
    return ", ".join(f"{name}:{format_number(weight)}" for name, weight in loras)
