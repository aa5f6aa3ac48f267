"""What the "Use via API" page and `gradio_client`'s `view_api()` say about each endpoint: every
parameter's type, range, default and an example, read from presets/.

Gradio builds an endpoint's entry from its event function (the docstring's first lines are the
description) and from each input component: `api_info()` gives the type and the description
shown after "The input value that is provided in the ... component.", and `example_payload()`
the value the page's snippet passes for a required parameter. The docstring's "Parameters:"
section reaches only Gradio's MCP schema, so each parameter is described in both places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from pipelines.imaging.images import ACCEPTED
from pipelines.modes.table import Mode
from presets import CUSTOM, EXAMPLES, EXAMPLES_DIR, MATCH_INPUT, PRESETS, format_number

# Example files are named by their path in the repository, where the README's examples run too.
REPOSITORY = EXAMPLES_DIR.parent.parent
MASK_SUFFIX = "_mask.png"  # an example image's inpainting mask lies beside it: <stem>_mask.png

# What presets/ does not say of a parameter: what it does, where the page's label and info do not
# say it in the API's terms.
TEXTS = {
    "negative_prompt": "What to keep out of the image; used only when true_cfg_scale is above 1.",
    "mask_image": "White where the image is repainted, black where it is kept; any size (it is resized to "
                  "the image's). Replaces the painted layers.",
    "step_cache": "auto lets the server's acceleration profile decide; first_block and taylorseer skip "
                  "transformer work on steps that change little.",
    "control_type": "canny follows the image's edges, depth its near and far.",
    "aspect_ratio": "Grows the short side evenly to this aspect instead of the expand_* pixels; none uses them.",
}


def endpoint_docstring(mode: Mode, variant: str | None, names: tuple[str, ...]) -> str:
    """The endpoint function's docstring: the mode's description, then each parameter's
    (`names`, the endpoint's), in the "Parameters:" form Gradio parses."""
    lines = [f"    {name}: {parameter_description(mode, variant, name)}" for name in names]
    return "\n".join([mode.description, "", "Parameters:", *lines])


def document_inputs(mode: Mode, variant: str | None, controls: dict[str, gr.Component]) -> None:
    """Give each input of a mode's endpoint (`controls`, by parameter name) its API type,
    description and example."""
    example = mode_example(mode)
    for name, component in controls.items():
        schema = api_schema(mode, variant, name, component.api_info())
        value = example_value(mode, variant, name, example)
        # Gradio has no per-component setting for these: it calls the two methods a custom
        # component overrides. The controls are declared in tabs.py and components.py, so each
        # one gets its documented versions here.
        component.api_info = lambda schema=schema: schema
        component.example_payload = lambda value=value: value


def api_schema(mode: Mode, variant: str | None, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The component's JSON schema with the parameter's type and range, and its description
    after Gradio's own (an image's "A local filepath or publicly available URL.")."""
    description = parameter_description(mode, variant, name)
    documented = {**schema, "additional_description": " ".join(filter(None, (schema.get("additional_description"),
                                                                              description)))}
    if name in PRESETS.fields:
        spec = PRESETS.field(name, mode.name)
        documented.update(type="integer" if spec.kind == "int" else "number", minimum=spec.min, maximum=spec.max,
                          description=description)  # in place of Gradio's "numeric value between ..."
    return documented


def parameter_description(mode: Mode, variant: str | None, name: str) -> str:
    """One parameter, in a line: what it accepts, its default, what it does."""
    presets = PRESETS.modes[mode.name]
    if name in PRESETS.fields:
        spec = PRESETS.field(name, mode.name)
        accepts = spec.describe_range()
        if name in ("width", "height"):  # the most specific wins: explicit sides over a preset
            other = "height" if name == "width" else "width"
            return sentence(f"{accepts}, a multiple of {PRESETS.size_multiple}; given with {other}, the two win "
                            f"over image_size; {default_text(mode, variant, name)} with image_size {CUSTOM}")
        return sentence(f"{accepts}; {default_text(mode, variant, name)}", spec.info)
    if name in PRESETS.flags:
        flag = PRESETS.flags[name]
        return sentence(f"true or false; default {str(flag.default).lower()}", flag.info)
    if name in PRESETS.choices:
        choice = PRESETS.choices[name]
        return sentence(f"one of {', '.join(choice.values)}; default {choice.default}", TEXTS.get(name, ""))
    if name == "image_size":
        return sentence(f"one of {', '.join(size_choice(value) for value in PRESETS.size_choices(mode.name))}; "
                        f"default {presets.image_size}")
    if name in ("prompt", "negative_prompt"):
        needed = "required" if name in mode.required else "optional"
        return sentence(f"{needed}, at most {PRESETS.max_prompt_chars} characters",
                        TEXTS.get(name) or presets.placeholders.get(name, ""))
    if name in ("image", "mask_image"):
        needed = "required" if name in mode.required else "optional"
        accepts = (f"{ACCEPTED} or URL, at least {PRESETS.input_min_side} px a side and at most "
                   f"{format_number(PRESETS.input_max_pixels / 1e6)} megapixels")
        if name == "image" and "mask_image" in mode.parameters:  # the page's image editor
            return sentence(f"{needed}: the image editor's value {{\"background\": the image, \"layers\": painted "
                            f"layers, \"composite\": None}}; the image is {accepts}",
                            "The white or opaque pixels of the layers are repainted (or give mask_image)")
        return sentence(f"{needed}: {accepts}", TEXTS.get(name, ""))
    if name == "loras":
        limits = PRESETS.loras
        weights = f"{format_number(limits.min_weight)} to {format_number(limits.max_weight)}"
        return sentence(f"optional: LoRAs loaded with /load_lora, by name with a weight, \"name:0.8, other:0.5\" "
                        f"(weight {weights}, default 1; at most {limits.max_per_request})")
    raise KeyError(f"no API description for the parameter {name!r} of {mode.name}")


def default_text(mode: Mode, variant: str | None, name: str) -> str:
    """'default 28', or the defaults by the variant field's value where they differ by it
    (control: steps 50 for canny, 30 for depth)."""
    variants = PRESETS.modes[mode.name].variants
    values = PRESETS.choices[mode.variant_field].values if mode.variant_field else ()
    if any(name in variants.get(value, {}) for value in values):
        by_value = ", ".join(f"{format_number(PRESETS.default(name, mode.name, value))} for {value}"
                             for value in values)
        return f"default by {mode.variant_field}: {by_value}"
    return f"default {format_number(PRESETS.default(name, mode.name, variant))}"


def size_choice(value: str) -> str:
    if value in PRESETS.image_sizes:
        width, height = PRESETS.image_sizes[value]
        return f"{value} ({width}×{height})"
    return {MATCH_INPUT: f"{value} (follows the input image)", CUSTOM: f"{value} (width × height)"}[value]


def sentence(*parts: str) -> str:
    """Parts as sentences, each capitalised and ended with a full stop."""
    texts = [part.strip() for part in parts if part and part.strip()]
    return " ".join(text[0].upper() + text[1:] + ("" if text.endswith(".") else ".") for text in texts)


def mode_example(mode: Mode) -> dict[str, str]:
    """The example the page shows for a mode: its first in presets/examples.toml with a prompt;
    a mode without one borrows the first of another mode with the same inputs (an image or
    none). An inpainting mode takes one whose image has a mask beside it."""
    takes_image, takes_mask = "image" in mode.parameters, "mask_image" in mode.parameters
    examples = EXAMPLES.get(mode.name, []) + [example for examples in EXAMPLES.values() for example in examples]
    for example in examples:
        if (("image" in example) == takes_image and (example.get("prompt") or not mode.prompt_required)
                and (not takes_mask or example_mask(example) is not None)):
            return example
    raise LookupError(f"presets/examples.toml has no example {mode.name} can show")


def example_mask(example: dict[str, str]) -> Path | None:
    if "image" not in example:
        return None
    mask = Path(example["image"]).with_name(Path(example["image"]).stem + MASK_SUFFIX)
    return mask if mask.is_file() else None


def example_value(mode: Mode, variant: str | None, name: str, example: dict[str, str]) -> Any:
    """A parameter's example: the mode's example prompt and image (a mask painted as the
    editor's layer), else the parameter's default."""
    if name == "prompt":
        return example["prompt"]
    if name == "image":
        image = example_file(Path(example["image"]))
        mask = example_mask(example)
        if "mask_image" in mode.parameters:
            return {"background": image, "layers": [example_file(mask)] if mask else [], "composite": None}
        return image
    if name == "mask_image":
        mask = example_mask(example)
        return example_file(mask) if mask else None
    if name in PRESETS.fields:
        default = PRESETS.default(name, mode.name, variant)
        return int(default) if PRESETS.fields[name].kind == "int" else float(default)
    if name in PRESETS.flags:
        return PRESETS.flags[name].default
    if name in PRESETS.choices:
        return PRESETS.choices[name].default
    if name == "image_size":
        return PRESETS.modes[mode.name].image_size
    return None  # optional text (negative_prompt, loras): left out


def example_file(path: Path) -> dict[str, Any]:
    """A shipped file as `gradio_client.handle_file` makes it, with its path in the repository.
    The page's snippet writes a file's `url` as `handle_file('<url>')`."""
    shipped = path.relative_to(REPOSITORY).as_posix()
    return {"path": shipped, "url": shipped, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
