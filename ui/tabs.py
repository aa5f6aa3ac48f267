"""The mode tabs, one per mode of the table: each declares its inputs from the mode's parameters
and wires its Generate button to its API endpoint."""

from __future__ import annotations

from itertools import groupby

import gradio as gr

from pipelines.loras.sources import available_loras
from pipelines.modes.table import MODES, Mode
from pipelines.service import Playground
from presets import EXAMPLES, PRESETS
from ui.api_docs import document_inputs
from ui.components import (
    Dropdown,
    ImageEditor,
    choice_input,
    image_input,
    negative_prompt_controls,
    number_input,
    prompt_box,
    settings_controls,
)
from ui.endpoints import (
    ParsedRequests,
    endpoint_parameters,
    make_endpoint,
    make_lora_endpoints,
    make_validator,
)
from ui.results import SessionRuns, results_panel, wire_results

# Every generating endpoint shares one accelerator: one request at a time across all tabs.
ACCELERATOR = "accelerator"


def wire(playground: Playground, parsed: ParsedRequests, runs: SessionRuns, mode: Mode,
         button: gr.Button, controls: dict, outputs: list, progress_on: gr.Component):
    """Bind a tab's Generate button to its endpoint: one named API route per mode. Its progress
    and queue position show on `progress_on`, never over the images."""
    names = endpoint_parameters(mode)
    return button.click(
        make_endpoint(playground, mode.name, parsed, runs), [controls[name] for name in names], outputs,
        api_name=mode.name, validator=make_validator(playground, mode.name, parsed, runs),
        # Every request waits in the service's one line (with the REST APIs'), not in Gradio's.
        concurrency_id=ACCELERATOR, concurrency_limit=playground.max_waiting + playground.queue.max_running,
        show_progress_on=[progress_on],
    )


def mode_tab(playground: Playground, parsed: ParsedRequests, runs: SessionRuns,
             mode: Mode) -> dict:
    """A mode's tab: its own inputs, the shared settings, results and examples."""
    variant = mode.variant({}, playground.fill)
    with gr.Tab(PRESETS.modes[mode.name].title, id=mode.name):
        with gr.Row():
            with gr.Column(scale=5):
                controls = mode_inputs(mode, variant)
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                controls.update(settings_controls(mode.name, variant))
            with gr.Column(scale=6):
                results = results_panel(mode)
                outputs = results.outputs
                if mode.returns_control_image:
                    outputs.append(gr.Image(label="Control map used", interactive=False, height=300,
                                            elem_id="control-map"))
                if mode.chains_results:
                    add_iterative_editing(controls, outputs)
        document_inputs(mode, variant, controls)
        generation = wire(playground, parsed, runs, mode, button, controls, outputs, results.status)
        wire_results(results, runs, mode, button, stop, generation)
        with gr.Accordion("Restore parameters from a saved image", open=False):
            saved = gr.File(label="Drop a PNG, JPEG or WebP saved by this playground", file_types=["image"],
                            elem_id=f"restore-{mode.name}")
        if mode.variant_field:
            follow_variant(mode, controls)
        if "aspect_ratio" in controls:
            grow_one_way(controls)
    return {"controls": controls, "restore_from": saved, "results": results}


def mode_tabs(playground: Playground) -> dict[str, dict]:
    """Every mode's tab, in the order of the mode table."""
    parsed, runs = ParsedRequests(), SessionRuns()
    return {name: mode_tab(playground, parsed, runs, mode) for name, mode in MODES.items()}


# Numbers that apply to one value of a mode's variant field only (the Canny thresholds).
SHOWN_FOR = {"canny_low_threshold": "canny", "canny_high_threshold": "canny"}
# Outpainting grows the canvas by margins or to an aspect ratio, not both.
MARGINS = ("expand_left", "expand_right", "expand_top", "expand_bottom")
# The aspect ratio's default applies to a request without margins, so the API page must not send it
# with every call: its control starts empty (no API default) and the page fills it in when it loads.
FILLED_AT_LOAD = ("aspect_ratio",)


def mode_inputs(mode: Mode, variant: str | None) -> dict[str, gr.Component]:
    """A mode's own inputs, in the order of its parameters, each built for its field, and its
    examples under the prompt; runs of numbers share rows, two to a row."""
    controls: dict[str, gr.Component] = {}
    names = [name for name in mode.parameters if name != "true_cfg_scale"]  # it joins the negative prompt
    for numeric, run in groupby(names, key=lambda name: name in PRESETS.fields):
        if not numeric:
            for name in run:
                controls.update(field_input(mode, name))
                if name == "prompt":
                    mode_examples(mode, controls)
            continue
        run = list(run)
        for pair in (run[start:start + 2] for start in range(0, len(run), 2)):
            with gr.Row():
                for name in pair:
                    shown = {"visible": SHOWN_FOR[name] == variant} if name in SHOWN_FOR else {}
                    controls[name] = number_input(name, mode.name, variant, **shown)
    return controls


def mode_examples(mode: Mode, controls: dict) -> None:
    """The mode's examples (presets/examples.toml): a click fills in their prompt and image."""
    examples = EXAMPLES.get(mode.name, [])
    if examples:
        fields = list(examples[0])
        gr.Examples([[example[name] for name in fields] for example in examples], [controls[name] for name in fields],
                    label="Examples")


def field_input(mode: Mode, name: str) -> dict[str, gr.Component]:
    """The control (or controls) of one non-numeric field."""
    label, placeholder = PRESETS.label(name, mode.name), PRESETS.modes[mode.name].placeholders.get(name)
    if name == "prompt":
        return {name: prompt_box(label, placeholder or "Describe the image", 2 if placeholder else 3)}
    if name == "negative_prompt":
        return negative_prompt_controls()
    if name == "image" and "mask_image" in mode.parameters:  # the mask is painted on the image
        return {name: ImageEditor(
            label=label, placeholder=placeholder, type="filepath", sources=["upload", "clipboard"],
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=40), eraser=gr.Eraser(),
            layers=False, transforms=(), height=420, elem_id=f"{mode.name}-editor")}
    if name == "mask_image":
        with gr.Accordion("Or upload a mask", open=False):
            return {name: image_input(label, placeholder=placeholder, height=240)}
    if name == "image":
        return {name: image_input(label, placeholder=placeholder)}
    if name in PRESETS.flags:
        flag = PRESETS.flags[name]
        return {name: gr.Checkbox(value=flag.default, label=flag.label, info=flag.info)}
    return {name: choice_input(PRESETS.choices[name], **({"value": None} if name in FILLED_AT_LOAD else {}))}


def grow_one_way(controls: dict) -> None:
    """Typing a margin sets the aspect ratio to none; picking an aspect ratio clears the margins
    (`input`: what the user does, not what a restore sets)."""
    aspect, margins = controls["aspect_ratio"], [controls[name] for name in MARGINS]
    for margin in margins:
        margin.input(lambda value: "none" if value else gr.skip(), margin, aspect, api_visibility="private",
                     queue=False)
    aspect.input(lambda value: tuple(gr.skip() if value == "none" else 0 for _ in margins), aspect, margins,
                 api_visibility="private", queue=False)


# A variant's guidance and steps differ (control: Canny guidance 30, 50 steps; Depth 10, 30). Their
# boxes start empty, so that the API page gives them no default and a caller who leaves them
# out gets the defaults of the variant asked for; the page fills them in when it loads and
# whenever the variant changes.
VARIANT_FIELDS = ("guidance_scale", "num_inference_steps")


def follow_variant(mode: Mode, controls: dict) -> None:
    """Sliders of one variant show for it, whoever sets the variant field; the variant's
    guidance and steps come in when the user picks it (`input`), not when a restore sets it
    with saved values."""
    for name in VARIANT_FIELDS:
        controls[name].value = None
    kind = controls[mode.variant_field]
    shown = [name for name in mode.parameters if name in SHOWN_FOR]
    kind.change(lambda value: tuple(gr.update(visible=SHOWN_FOR[name] == value) for name in shown), kind,
                [controls[name] for name in shown], api_visibility="private", queue=False)
    kind.input(lambda value: variant_defaults(mode, value), kind, [controls[name] for name in VARIANT_FIELDS],
               api_visibility="private", queue=False)


def variant_defaults(mode: Mode, value: str) -> tuple:
    """The variant's guidance and steps."""
    variant = mode.variant({mode.variant_field: value}, False)
    return tuple(PRESETS.default(name, mode.name, variant) for name in VARIANT_FIELDS)


def fill_variant_defaults(page: gr.Blocks, tabs: dict) -> None:
    """Give the controls that start empty their page's values when the page loads: the variant's
    guidance and steps, and the choices of FILLED_AT_LOAD."""
    for name, mode in MODES.items():
        controls = tabs[name]["controls"]
        if mode.variant_field:
            page.load(lambda value, mode=mode: variant_defaults(mode, value), controls[mode.variant_field],
                      [controls[field] for field in VARIANT_FIELDS], api_visibility="private", queue=False)
        for field in FILLED_AT_LOAD:
            if field in controls:
                page.load(lambda field=field: PRESETS.choices[field].default, None, controls[field],
                          api_visibility="private", queue=False)


def add_iterative_editing(controls: dict, outputs: list) -> None:
    """'Edit this result next': the selected (or first) Kontext result becomes the next input."""
    gallery = outputs[0]
    selected = gr.State(0)
    use_result = gr.Button("Edit this result next", size="sm", elem_id="edit-result-next")
    gallery.select(_selected_index, None, selected, api_visibility="private", queue=False)
    use_result.click(_result_as_input, [gallery, selected], controls["image"],
                     api_visibility="private", queue=False)


def _selected_index(event: gr.SelectData) -> int:
    return event.index


def _result_as_input(gallery: list | None, index: int):
    if not gallery:
        raise gr.Error("Generate an edit first, then send it back as the next input.")
    item = gallery[min(index, len(gallery) - 1)]
    return item[0] if isinstance(item, (list, tuple)) else item


def compiled_lora_note(playground: Playground) -> str:
    """What a compiled transformer means for LoRAs, when this server has one."""
    _, rank_limit = playground.manager.loras.ranks()
    if rank_limit is None:
        return ""
    return (f" This server's transformer is compiled: LoRAs take turns in one adapter of rank {rank_limit}, so "
            f"switching them never recompiles, and the ranks of one request's LoRAs may add up to {rank_limit}.")


def lora_tab(playground: Playground) -> None:
    """Load and unload LoRAs on the dev transformer; the `/load_lora` and `/unload_lora` endpoints."""
    with gr.Tab("LoRAs", id="loras"):
        gr.Markdown("Load LoRAs onto the FLUX.1 [dev] transformer, then apply them in any tab that runs on it "
                    "by name in its **LoRAs** field, e.g. `my_style:0.8, other:0.5`. Loading never reloads "
                    "the model; a LoRA no request names does nothing." + compiled_lora_note(playground))
        with gr.Row():
            source = gr.Dropdown(available_loras(playground.lora_sources), value=None, allow_custom_value=True,
                                 label="Source", scale=3, elem_id="lora-source",
                                 info="A hub repository (user/repo or user/repo/file.safetensors), a URL to "
                                      "a .safetensors file, or a file in the server's LoRA folders.")
            name = gr.Textbox(label="Name (optional)", scale=1, info="Defaults to the file's name.")
        load = gr.Button("Load LoRA", variant="primary", elem_id="load-lora")
        # What the last load or unload did, or why it could not and what to do; its progress shows here.
        message = gr.Textbox(label="Message", interactive=False, elem_id="lora-message", max_lines=4,
                             placeholder="Downloads, loading and what went wrong show here.")
        with gr.Row():
            # Unchecked: the choices change as LoRAs load; the manager says when a name is unknown.
            loaded_names = Dropdown(sorted(playground.manager.loras.names()), label="Loaded LoRA", scale=3)
            unload = gr.Button("Unload", scale=1)
        loaded = gr.JSON(label="Loaded LoRAs", value=playground.manager.loras.status(), elem_id="loaded-loras")
        load_lora, unload_lora, list_loras = make_lora_endpoints(playground)
        # The API is the endpoints themselves; the page's events (below) are private.
        for endpoint in (load_lora, unload_lora):
            gr.api(endpoint, api_name=endpoint.__name__, concurrency_id="loras", concurrency_limit=1)
        gr.api(list_loras, api_name="list_loras", queue=False)

    def on_page(endpoint, done):
        """The endpoint as the page runs it: the outcome in words; a failure leaves the list as it was
        (gr.Error would mark the list itself as an error)."""

        def run(*values):
            before = playground.manager.loras.names()
            try:
                status = endpoint(*values)
            except gr.Error as error:
                return gr.skip(), f"{error.title}: {error.message}", gr.skip()
            names = sorted(playground.manager.loras.names())
            return status, done(before, *values), gr.Dropdown(choices=names, value=None)

        return run

    def loaded_message(before, source, name) -> str:
        added = ", ".join(sorted(playground.manager.loras.names() - before)) or name
        return f"Loaded {added}: apply it by name in a tab's LoRAs field, e.g. {added}:0.8"

    # Their own queue (shared with the API's): a download must not hold up generation (the
    # manager locks the accelerator only to apply the LoRA).
    for button, endpoint, inputs, done in (
            (load, load_lora, [source, name], loaded_message),
            (unload, unload_lora, [loaded_names], lambda before, name: f"Unloaded {name}.")):
        button.click(on_page(endpoint, done), inputs, [loaded, message, loaded_names], api_visibility="private",
                     concurrency_id="loras", concurrency_limit=1, show_progress_on=[message])
