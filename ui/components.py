"""The page's building blocks: controls that read presets/, and the results column."""

from __future__ import annotations

import gradio as gr

from pipelines.modes.table import MODES
from presets import CUSTOM, PRESETS

# Gradio's Slider, Number, Dropdown, Radio and Image check values in `preprocess` and refuse
# bad API values with a message that names no field (and, before a validator, no message at
# all). These subclasses hand values to the endpoint unchecked; the request validator checks
# every one against presets/ and names the field and its range. `is_template` keeps each
# parent's frontend component. (Gradio writes a stub `components.pyi` for them; it is ignored.)


def _unchecked(self, payload):
    return payload


class Slider(gr.Slider):
    is_template = True
    preprocess = _unchecked


class Number(gr.Number):
    is_template = True
    preprocess = _unchecked


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


def slider(name: str, mode: str | None = None, variant: str | None = None, **options) -> gr.Slider:
    """A slider with the field's range and default (the mode's and variant's, where they differ)."""
    spec = PRESETS.field(name, mode)
    return Slider(spec.min, spec.max, value=PRESETS.default(name, mode, variant), step=spec.step,
                  label=spec.label, info=spec.info or None, **options)


def settings_controls(mode: str, variant: str | None = None) -> dict[str, gr.Component]:
    """The controls every mode shares, with ranges and defaults from presets/."""
    size_default = PRESETS.modes[mode].image_size
    controls: dict[str, gr.Component] = {}
    with gr.Accordion("Settings", open=True):
        if MODES[mode].sized:
            controls.update(size_controls(mode, size_default))
        else:
            controls["num_images"] = slider("num_images", mode, variant)
        with gr.Row():
            controls["num_inference_steps"] = slider("num_inference_steps", mode, variant)
            controls["guidance_scale"] = slider("guidance_scale", mode, variant)
        seed = PRESETS.field("seed")
        with gr.Row():
            controls["seed"] = Number(value=PRESETS.default("seed", mode, variant), precision=0, label=seed.label,
                                      info=seed.info)
            controls["output_format"] = Radio(list(PRESETS.output_formats),
                                              value=PRESETS.default_output_format, label="Output format")
        controls["output_quality"] = slider("output_quality", mode, variant)
        with gr.Row():
            for name in ("enable_safety_checker", "live_preview"):
                flag = PRESETS.flags[name]
                controls[name] = gr.Checkbox(value=flag.default, label=flag.label, info=flag.info)
        cache = PRESETS.choices["step_cache"]
        controls["step_cache"] = Dropdown(list(cache.values), value=cache.default, label=cache.label,
                                          info="auto: the server's acceleration profile decides (off unless it "
                                               "is high). Caching skips transformer work on steps that change "
                                               "little: faster, slightly different.")
        if MODES[mode].route.takes_loras:
            controls["loras"] = gr.Textbox(
                label="LoRAs", placeholder="name:weight, name2:weight", max_lines=1,
                info="Loaded LoRAs to apply, by name (see the LoRAs tab), each with a weight (default 1).",
                elem_classes=["loras-field"])
    return controls


def size_controls(mode: str, size_default: str) -> dict[str, gr.Component]:
    controls: dict[str, gr.Component] = {}
    with gr.Row():
        controls["image_size"] = Dropdown(
            list(PRESETS.size_choices(mode)), value=size_default, label="Image size",
            info="A preset, match_input (follow the input image) or custom.",
        )
        controls["num_images"] = slider("num_images", mode)
    with gr.Row(visible=size_default == CUSTOM) as custom_row:
        controls["width"] = slider("width")
        controls["height"] = slider("height")
    controls["image_size"].change(
        lambda choice: gr.Row(visible=choice == CUSTOM), controls["image_size"], custom_row,
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


def prompt_box(label="Prompt", placeholder="Describe the image", lines=3) -> gr.Textbox:
    return gr.Textbox(label=label, placeholder=placeholder, lines=lines, max_lines=8)


def negative_prompt_controls() -> dict[str, gr.Component]:
    with gr.Accordion("Negative prompt (true CFG)", open=False):
        return {
            "negative_prompt": gr.Textbox(label="Negative prompt", lines=1, info="Used when true CFG scale is above 1."),
            "true_cfg_scale": slider("true_cfg_scale"),
        }
