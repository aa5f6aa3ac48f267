"""Typed, read-only view of `parameters.toml`: the single source of sizes, ranges and defaults.

The UI, the API documentation and request validation all read these objects, so a range
changed in the TOML file changes everywhere at once.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

# FLUX_PARAMETERS_FILE: another parameter file (your own ranges and defaults, or a new mode's entry).
PARAMETERS_FILE = Path(os.environ.get("FLUX_PARAMETERS_FILE") or Path(__file__).with_name("parameters.toml"))
EXAMPLES_FILE = Path(__file__).with_name("examples.toml")
EXAMPLES_DIR = Path(__file__).with_name("examples")

MATCH_INPUT = "match_input"
CUSTOM = "custom"


def format_number(value: float) -> str:
    """1, 0.01, 4294967295: whole numbers in full, others as short as they read."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class NumericField:
    name: str
    label: str
    kind: str  # "int" or "float"
    min: float
    max: float
    step: float
    default: float
    info: str = ""

    def describe_range(self) -> str:
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} from {format_number(self.min)} to {format_number(self.max)}"


@dataclass(frozen=True)
class Flag:
    name: str
    label: str
    default: bool
    info: str = ""


@dataclass(frozen=True)
class Choice:
    name: str
    label: str
    values: tuple[str, ...]
    default: str
    info: str
    value_labels: Mapping[str, str]  # the page's name of each value, where it differs

    def options(self, values: tuple[str, ...] | None = None) -> tuple[tuple[str, str], ...]:
        """(page label, value) pairs of `values` (all of them unless given), as Gradio's choices."""
        return tuple((self.value_labels.get(value, value), value) for value in values or self.values)


@dataclass(frozen=True)
class ModeDefaults:
    """A mode's title, default size choice, and its overrides of fields' defaults and ranges;
    a variant (the model or control type a request runs with) overrides defaults again."""

    name: str
    title: str
    image_size: str
    defaults: Mapping[str, float]
    ranges: Mapping[str, tuple[float, float]]
    variants: Mapping[str, Mapping[str, float]]
    labels: Mapping[str, str]  # the page's labels for its inputs, where they differ from the fields'
    placeholders: Mapping[str, str]


@dataclass(frozen=True)
class LoraLimits:
    max_per_request: int
    min_weight: float
    max_weight: float
    compiled_rank: int  # with a compiled transformer: the most the ranks of a request's LoRAs add up to


@dataclass(frozen=True)
class Presets:
    image_sizes: Mapping[str, tuple[int, int]]
    image_size: Choice  # the page's size choice; its values are every mode's, its default is each mode's own
    size_min: int
    size_max: int
    size_multiple: int
    fields: Mapping[str, NumericField]
    flags: Mapping[str, Flag]
    choices: Mapping[str, Choice]
    output_formats: tuple[str, ...]
    default_output_format: str
    loras: LoraLimits
    max_prompt_chars: int
    modes: Mapping[str, ModeDefaults]
    labels: Mapping[str, str]  # the page's names of the text, image and LoRA fields
    input_min_side: int
    input_max_pixels: int
    preview_every_steps: int
    preview_max_side: int

    def field(self, name: str, mode: str | None = None) -> NumericField:
        """A field, with the mode's range where the mode overrides it."""
        spec = self.fields[name]
        if mode is not None and name in self.modes[mode].ranges:
            low, high = self.modes[mode].ranges[name]
            spec = replace(spec, min=low, max=high)
        return spec

    def default(self, name: str, mode: str | None = None, variant: str | None = None) -> float:
        """A field's default: the variant's, else the mode's, else the field's own."""
        if mode is None:
            return self.fields[name].default
        overrides = self.modes[mode]
        for layer in (overrides.variants.get(variant or "", {}), overrides.defaults):
            if name in layer:
                return layer[name]
        return self.fields[name].default

    def size_choices(self, mode: str) -> tuple[str, ...]:
        """The `image_size` values a mode accepts: presets, custom, and match_input for image modes."""
        extra = (MATCH_INPUT,) if mode != "text_to_image" else ()
        return extra + tuple(self.image_sizes) + (CUSTOM,)

    def label(self, name: str, mode: str | None = None) -> str:
        """A field's name in the page: the mode's label for it, else the field's own."""
        if mode is not None and name in self.modes[mode].labels:
            return self.modes[mode].labels[name]
        for table in (self.fields, self.flags, self.choices, {"image_size": self.image_size}):
            if name in table:
                return table[name].label
        return self.labels.get(name, name)


def read_toml(path: Path) -> dict:
    """A parameter file's contents, or a ValueError saying which file (and variable) is wrong."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        given = " (FLUX_PARAMETERS_FILE)" if os.environ.get("FLUX_PARAMETERS_FILE") else ""
        raise ValueError(f"the parameter file {path}{given} cannot be read: {error}") from None


def load_presets(path: Path = PARAMETERS_FILE) -> Presets:
    data = read_toml(path)
    fields = {
        name: NumericField(name=name, **spec) for name, spec in data["fields"].items()
    }
    modes = {
        name: ModeDefaults(
            name=name, title=spec["title"], image_size=spec["image_size"],
            defaults=MappingProxyType(spec.get("defaults", {})),
            ranges=MappingProxyType({field: tuple(bounds) for field, bounds in spec.get("ranges", {}).items()}),
            variants=MappingProxyType({key: MappingProxyType(values) for key, values in spec.get("variants", {}).items()}),
            labels=MappingProxyType(spec.get("labels", {})),
            placeholders=MappingProxyType(spec.get("placeholders", {})),
        )
        for name, spec in data["modes"].items()
    }
    choices = {name: read_choice(name, spec) for name, spec in data["choices"].items()}
    image_sizes = MappingProxyType({k: tuple(v) for k, v in data["image_sizes"].items()})
    size = data["image_size"]
    size_labels = {value: f"{size['value_labels'].get(value, value)} · {width}×{height}"
                   for value, (width, height) in image_sizes.items()}
    return Presets(
        image_sizes=image_sizes,
        image_size=read_choice("image_size", {**size, "values": [MATCH_INPUT, *image_sizes, CUSTOM], "default": "",
                                               "value_labels": {**size["value_labels"], **size_labels}}),
        size_min=data["custom_size"]["min"],
        size_max=data["custom_size"]["max"],
        size_multiple=data["custom_size"]["multiple_of"],
        fields=MappingProxyType(fields),
        flags=MappingProxyType({name: Flag(name=name, **spec) for name, spec in data["flags"].items()}),
        choices=MappingProxyType(choices),
        output_formats=choices["output_format"].values,
        default_output_format=choices["output_format"].default,
        loras=LoraLimits(**data["loras"]),
        max_prompt_chars=data["text"]["max_chars"],
        modes=MappingProxyType(modes),
        labels=MappingProxyType(data["labels"]),
        input_min_side=data["input_image"]["min_side"],
        input_max_pixels=data["input_image"]["max_pixels"],
        preview_every_steps=data["previews"]["every_steps"],
        preview_max_side=data["previews"]["max_side"],
    )


def read_choice(name: str, spec: dict) -> Choice:
    return Choice(name=name, label=spec["label"], values=tuple(spec["values"]), default=spec["default"],
                  info=spec.get("info", ""), value_labels=MappingProxyType(spec.get("value_labels", {})))


def load_examples(path: Path = EXAMPLES_FILE) -> dict[str, list[dict[str, str]]]:
    """Each mode's examples, with image names resolved to files in `examples/`."""
    data = tomllib.loads(path.read_text())
    return {
        mode: [
            {key: str(EXAMPLES_DIR / value) if key == "image" else value for key, value in example.items()}
            for example in examples
        ]
        for mode, examples in data.items()
    }


PRESETS = load_presets()
EXAMPLES = load_examples()
