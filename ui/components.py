"""The page's building blocks: controls that read presets/, and the results column."""

from __future__ import annotations

import gradio as gr

from pipelines.modes.table import MODES
from presets import CUSTOM, PRESETS, Choice, format_number

# Gradio's Number, Dropdown, Radio and Image check values in `preprocess` and refuse bad API
# values with a message that names no field (and, before a validator, no message at all).
# These subclasses hand values to the endpoint unchecked; the request validator checks every
# one against presets/ and names the field and its range. `is_template` keeps each parent's
# frontend component. (Gradio writes a stub `components.pyi` for them; it is ignored.)


def _unchecked(self, payload):
    return payload


class Number(gr.Number):
    """Numeric fields are number boxes, not sliders: Gradio's Slider clamps a typed value into
    its range when its box loses focus (it has no option to keep it), so a typed 500 steps
    would silently run 50. A number box sends what was typed; validation refuses it with the range."""

    is_template = True
    preprocess = _unchecked

    def api_info(self) -> dict:
        # The range in the API page, as Gradio's Slider gives it.
        if self.minimum is None or self.maximum is None:
            return super().api_info()
        return {**super().api_info(), "description": f"numeric value between {self.minimum} and {self.maximum}"}


class Dropdown(gr.Dropdown):
    is_template = True
    preprocess = _unchecked


class Radio(gr.Radio):
    is_template = True
    preprocess = _unchecked


class Image(gr.Image):
    is_template = True

    def preprocess(self, payload):
        # A path gradio has already checked to lie in its upload cache; decoding (and its
        # errors) happens in request validation.
        return None if payload is None else payload.path


class ImageEditor(gr.ImageEditor):
    """An image editor whose uploaded files reach request validation as they are. Gradio's
    own preprocess re-saves each in its original format and fails on a JPEG with painted
    (transparent) layers; blobs the page sends are still converted by it."""

    is_template = True

    def preprocess(self, payload):
        if payload is None or payload.id is not None:
            return super().preprocess(payload)
        return {"background": payload.background.path if payload.background else None,
                "layers": [layer.path for layer in payload.layers],
                "composite": payload.composite.path if payload.composite else None}


def number_input(name: str, mode: str | None = None, variant: str | None = None, **options) -> Number:
    """A number box with the field's range (in its help text) and default (the mode's and
    variant's, where they differ)."""
    spec = PRESETS.field(name, mode)
    span = f"{format_number(spec.min)} to {format_number(spec.max)}"
    options.setdefault("value", PRESETS.default(name, mode, variant))
    return Number(minimum=spec.min, maximum=spec.max, step=spec.step,
                  precision=0 if spec.kind == "int" else None, label=PRESETS.label(name, mode),
                  info=f"{spec.info} ({span})" if spec.info else f"From {span}", **options)


def choice_input(choice: Choice, values: tuple[str, ...] | None = None, **options) -> gr.Component:
    """Radio buttons for a few values, else a dropdown: each value under its page label, while
    the API takes the value itself."""
    choices = choice.options(values)
    component = Radio if len(choices) <= 3 else Dropdown
    return component(list(choices), **{"value": choice.default, "label": choice.label, "info": choice.info or None,
                                       **options})


def settings_controls(mode: str, variant: str | None = None) -> dict[str, gr.Component]:
    """The controls every mode shares, with ranges and defaults from presets/; folded away, so
    that a tab opens on its own inputs and examples."""
    size_default = PRESETS.modes[mode].image_size
    controls: dict[str, gr.Component] = {}
    with gr.Accordion("Settings", open=False):
        if MODES[mode].sized:
            controls.update(size_controls(mode, size_default))
        else:
            controls["num_images"] = number_input("num_images", mode, variant)
        with gr.Row():
            controls["num_inference_steps"] = number_input("num_inference_steps", mode, variant)
            controls["guidance_scale"] = number_input("guidance_scale", mode, variant)
        seed = PRESETS.field("seed")
        with gr.Row():
            controls["seed"] = Number(value=PRESETS.default("seed", mode, variant), precision=0, label=seed.label,
                                      info=seed.info)
            controls["output_format"] = choice_input(PRESETS.choices["output_format"])
        controls["output_quality"] = number_input("output_quality", mode, variant)
        with gr.Row():
            for name in ("enable_safety_checker", "live_preview"):
                flag = PRESETS.flags[name]
                controls[name] = gr.Checkbox(value=flag.default, label=flag.label, info=flag.info)
        controls["step_cache"] = choice_input(PRESETS.choices["step_cache"])
        if MODES[mode].route.takes_loras:
            controls["loras"] = gr.Textbox(
                label=PRESETS.label("loras"), placeholder="name:weight, name2:weight", max_lines=1,
                info="Loaded LoRAs to apply, by name (see the LoRAs tab), each with a weight (default 1).",
                elem_classes=["loras-field"])
    return controls


def size_controls(mode: str, size_default: str) -> dict[str, gr.Component]:
    controls: dict[str, gr.Component] = {}
    with gr.Row():
        controls["image_size"] = choice_input(PRESETS.image_size, PRESETS.size_choices(mode), value=size_default)
        controls["num_images"] = number_input("num_images", mode)
    # Width and height win over any preset (the most specific wins), so they hold values only
    # while "Custom size" is chosen; choosing it starts them at the preset that was shown.
    with gr.Row(visible=size_default == CUSTOM) as custom_row:
        controls["width"] = number_input("width", **({} if size_default == CUSTOM else {"value": None}))
        controls["height"] = number_input("height", **({} if size_default == CUSTOM else {"value": None}))
    shown = gr.State(size_default)

    def choose_size(choice: str, before: str, width: int | None, height: int | None):
        if choice != CUSTOM:
            return gr.Row(visible=False), None, None, choice
        if width is None or height is None:  # not set with the choice (as a restore sets them)
            width, height = PRESETS.image_sizes.get(before, (PRESETS.default("width"), PRESETS.default("height")))
        return gr.Row(visible=True), width, height, choice

    controls["image_size"].change(
        choose_size, [controls["image_size"], shown, controls["width"], controls["height"]],
        [custom_row, controls["width"], controls["height"], shown],
        api_visibility="private", queue=False,
    )
    return controls


def results_column() -> tuple[gr.Gallery, gr.Number, gr.JSON]:
    # `format`: how Gradio encodes the live previews, which are images in memory (results are files
    # and pass as they are): JPEG costs about 1 ms a preview where Gradio's default WebP costs 20-30.
    # A fixed size, opened on the first image: previews replace each other in place and the
    # final images land where they formed, captions shown, without the box changing height.
    gallery = gr.Gallery(label="Results", columns=4, height=560, object_fit="contain", interactive=False,
                         preview=True, format="jpeg", elem_classes=["results-gallery"])
    # Empty until a result comes (Gradio shows a None value as 0 at first; see `clear_on_load`).
    seed_used = gr.Number(value=None, label="Seed used", precision=0, interactive=False,
                          placeholder="shown with the results", elem_classes=["seed-used"])
    with gr.Accordion("Parameters used", open=False):
        info = gr.JSON(label="Parameters and timings")
    return gallery, seed_used, info


def image_input(label: str, **options) -> gr.Image:
    return Image(label=label, type="filepath", sources=["upload", "clipboard"], **{"height": 360, **options})


def prompt_box(label: str, placeholder="Describe the image", lines=3) -> gr.Textbox:
    return gr.Textbox(label=label, placeholder=placeholder, lines=lines, max_lines=8)


def negative_prompt_controls() -> dict[str, gr.Component]:
    with gr.Accordion("Negative prompt (true CFG)", open=False):
        return {
            "negative_prompt": gr.Textbox(label=PRESETS.label("negative_prompt"), lines=1,
                                          info="Used when true CFG scale is above 1."),
            "true_cfg_scale": number_input("true_cfg_scale"),
        }
