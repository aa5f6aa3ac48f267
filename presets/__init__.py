"""Typed, read-only view of `parameters.toml`: the single source of sizes, ranges and defaults.

The UI, the API documentation and request validation all read these objects, so a range
changed in the TOML file changes everywhere at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

PARAMETERS_FILE = Path(__file__).with_name("parameters.toml")
EXAMPLES_FILE = Path(__file__).with_name("examples.toml")
EXAMPLES_DIR = Path(__file__).with_name("examples")

MODES = ("text_to_image", "image_to_image", "kontext_edit", "redux_variation")
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
class ModeDefaults:
    name: str
    title: str
    guidance_scale: float
    image_size: str


@dataclass(frozen=True)
class Presets:
    image_sizes: Mapping[str, tuple[int, int]]
    size_min: int
    size_max: int
    size_multiple: int
    fields: Mapping[str, NumericField]
    flags: Mapping[str, Flag]
    output_formats: tuple[str, ...]
    default_output_format: str
    max_prompt_chars: int
    modes: Mapping[str, ModeDefaults]
    input_min_side: int
    input_max_pixels: int
    preview_every_steps: int
    preview_max_side: int

    def field(self, name: str) -> NumericField:
        return self.fields[name]

    def default(self, name: str, mode: str | None = None) -> float:
        """A field's default, with the mode's override where it has one."""
        if mode is not None and name == "guidance_scale":
            return self.modes[mode].guidance_scale
        return self.fields[name].default

    def size_choices(self, mode: str) -> tuple[str, ...]:
        """The `image_size` values a mode accepts: presets, custom, and match_input for image modes."""
        extra = (MATCH_INPUT,) if mode != "text_to_image" else ()
        return extra + tuple(self.image_sizes) + (CUSTOM,)


def load_presets(path: Path = PARAMETERS_FILE) -> Presets:
    data = tomllib.loads(path.read_text())
    fields = {
        name: NumericField(name=name, **spec) for name, spec in data["fields"].items()
    }
    modes = {
        name: ModeDefaults(name=name, **spec) for name, spec in data["modes"].items()
    }
    if tuple(modes) != MODES:
        raise ValueError(f"{path}: [modes] must list exactly {MODES}")
    formats = data["choices"]["output_format"]
    return Presets(
        image_sizes=MappingProxyType({k: tuple(v) for k, v in data["image_sizes"].items()}),
        size_min=data["custom_size"]["min"],
        size_max=data["custom_size"]["max"],
        size_multiple=data["custom_size"]["multiple_of"],
        fields=MappingProxyType(fields),
        flags=MappingProxyType({name: Flag(name=name, **spec) for name, spec in data["flags"].items()}),
        output_formats=tuple(formats["values"]),
        default_output_format=formats["default"],
        max_prompt_chars=data["text"]["max_chars"],
        modes=MappingProxyType(modes),
        input_min_side=data["input_image"]["min_side"],
        input_max_pixels=data["input_image"]["max_pixels"],
        preview_every_steps=data["previews"]["every_steps"],
        preview_max_side=data["previews"]["max_side"],
    )


def load_examples(path: Path = EXAMPLES_FILE) -> dict[str, list[dict[str, str]]]:
    """Each mode's examples, with image names resolved to files in `examples/`."""
    data = tomllib.loads(path.read_text())
    return {
        mode: [
            {key: str(EXAMPLES_DIR / value) if key == "image" else value for key, value in example.items()}
            for example in data.get(mode, [])
        ]
        for mode in MODES
    }


PRESETS = load_presets()
EXAMPLES = load_examples()
