"""The mode tabs: each declares its inputs and wires its Generate button to its API endpoint."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from pipelines.gradio_endpoints import (
    ENDPOINTS,
    QueueGate,
    make_endpoint,
    make_lora_endpoints,
    make_validator,
)
from pipelines.lora_sources import available_loras
from pipelines.service import Playground
from presets import EXAMPLES, PRESETS
from ui.components import (
    Dropdown,
    ImageEditor,
    Radio,
    image_input,
    negative_prompt_controls,
    prompt_box,
    results_column,
    settings_controls,
    slider,
)

# Every generating endpoint shares one accelerator: one request at a time across all tabs.
ACCELERATOR = "accelerator"


def wire(playground: Playground, gate: QueueGate, mode: str, button: gr.Button, controls: dict, outputs: list):
    """Bind a tab's Generate button to its endpoint: one named API route per mode."""
    names = ENDPOINTS[mode].parameters
    return button.click(
        make_endpoint(playground, mode), [controls[name] for name in names], outputs, api_name=mode,
        validator=make_validator(mode, gate, playground.offer),
        concurrency_id=ACCELERATOR, concurrency_limit=1,
    )


def mode_tab(playground: Playground, gate: QueueGate, mode: str, build_inputs: Callable[[], dict],
             add_to_results=None, variant: str | None = None, on_built=None) -> dict:
    """A tab: its own inputs (from `build_inputs`), the shared settings, results and examples.
    `add_to_results(controls, outputs)` may add controls under the results; `on_built(controls)`
    may wire events between the finished controls."""
    with gr.Tab(PRESETS.modes[mode].title, id=mode):
        with gr.Row():
            with gr.Column(scale=5):
                controls = build_inputs()
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                controls.update(settings_controls(mode, variant))
            with gr.Column(scale=6):
                outputs = list(results_column())
                if ENDPOINTS[mode].returns_control_image:
                    outputs.append(gr.Image(label="Control map used", interactive=False, height=300,
                                            elem_id="control-map"))
                if add_to_results:
                    add_to_results(controls, outputs)
        example_fields = list(EXAMPLES[mode][0]) if EXAMPLES[mode] else []
        if example_fields:
            gr.Examples([[ex[k] for k in example_fields] for ex in EXAMPLES[mode]],
                        [controls[k] for k in example_fields], label="Examples")
        generation = wire(playground, gate, mode, button, controls, outputs)
        # Stopping closes the endpoint's stream, which cancels the generation at its next step.
        stop.click(None, None, None, cancels=[generation], api_visibility="private", queue=False)
        with gr.Accordion("Restore parameters from a saved image", open=False):
            saved = gr.File(label="Drop a PNG, JPEG or WebP saved by this playground", file_types=["image"],
                            elem_id=f"restore-{mode}")
        if on_built:
            on_built(controls)
    return {"controls": controls, "restore_from": saved}


def mode_tabs(playground: Playground, gate: QueueGate) -> dict[str, dict]:
    """Every mode's tab, in the order of the page."""
    fill = "fill" if playground.offer().fill else None
    return {
        "text_to_image": mode_tab(playground, gate, "text_to_image", lambda: {
            "prompt": prompt_box(), **negative_prompt_controls()}),
        "image_to_image": mode_tab(playground, gate, "image_to_image", lambda: {
            "image": image_input("Input image"),
            "prompt": prompt_box(),
            "strength": slider("strength"),
        }),
        "kontext_edit": mode_tab(playground, gate, "kontext_edit", lambda: {
            "image": image_input("Image to edit"),
            "prompt": prompt_box("Instruction", "What to change, e.g. 'make it a watercolor'", 2),
            **negative_prompt_controls(),
        }, add_to_results=add_iterative_editing),
        "redux_variation": mode_tab(playground, gate, "redux_variation", lambda: {
            "image": image_input("Source image"),
            "prompt": prompt_box("Prompt (optional)", "Optionally steer the variations", 2),
            "prompt_embeds_scale": slider("prompt_embeds_scale"),
            "pooled_prompt_embeds_scale": slider("pooled_prompt_embeds_scale"),
        }),
        "inpaint": mode_tab(playground, gate, "inpaint", lambda: inpaint_inputs(fill), variant=fill),
        "outpaint": mode_tab(playground, gate, "outpaint", lambda: outpaint_inputs(fill), variant=fill),
        "control": mode_tab(playground, gate, "control", control_inputs, variant="canny",
                            on_built=follow_control_type),
    }


def inpaint_inputs(variant: str | None) -> dict[str, gr.Component]:
    controls: dict[str, gr.Component] = {
        "image": ImageEditor(
            label="Image: paint over what to change", type="filepath", sources=["upload", "clipboard"],
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=40), eraser=gr.Eraser(),
            layers=False, transforms=(), height=420, elem_id="inpaint-editor"),
    }
    with gr.Accordion("Or upload a mask", open=False):
        controls["mask_image"] = image_input("Mask: white is repainted (replaces the painted mask)", height=240)
    controls["prompt"] = prompt_box("Prompt", "What the painted area should show", 2)
    with gr.Row():
        controls["strength"] = slider("strength", "inpaint", variant)
        controls["mask_blur"] = slider("mask_blur")
    return controls


def outpaint_inputs(variant: str | None) -> dict[str, gr.Component]:
    controls: dict[str, gr.Component] = {
        "image": image_input("Image to extend"),
        "prompt": prompt_box("Prompt", "The whole scene, including what lies beyond the edges", 2),
    }
    with gr.Row():
        for side in ("left", "right", "top", "bottom"):
            controls[f"expand_{side}"] = slider(f"expand_{side}")
    ratio = PRESETS.choices["aspect_ratio"]
    controls["aspect_ratio"] = Dropdown(list(ratio.values), value=ratio.default, label=ratio.label,
                                        info="Instead of pixels: grow the short side evenly to this aspect.")
    with gr.Row():
        controls["strength"] = slider("strength", "outpaint", variant)
        controls["mask_blur"] = slider("mask_blur")
    return controls


def control_inputs() -> dict[str, gr.Component]:
    kind, preprocess = PRESETS.choices["control_type"], PRESETS.flags["preprocess"]
    controls: dict[str, gr.Component] = {
        "image": image_input("Structure from this image (or a ready edge or depth map)"),
        "prompt": prompt_box(),
        "control_type": Radio(list(kind.values), value=kind.default, label=kind.label,
                              info="Canny follows the edges; Depth follows near and far."),
        "preprocess": gr.Checkbox(value=preprocess.default, label=preprocess.label, info=preprocess.info),
    }
    with gr.Row():
        for name in CANNY_FIELDS:
            controls[name] = slider(name, visible=kind.default == "canny")
    return controls


# Control's guidance and steps depend on the control type (Canny: guidance 30, 50 steps; Depth:
# 10, 30). Their sliders start empty, so that the API page gives them no default and a caller
# who leaves them out gets the defaults of the control type asked for; the page fills them in
# when it loads and whenever the control type changes.
VARIANT_FIELDS = ("guidance_scale", "num_inference_steps")
CANNY_FIELDS = ("canny_low_threshold", "canny_high_threshold")  # shown for Canny only


def follow_control_type(controls: dict) -> None:
    """The Canny thresholds show for Canny, whoever sets the type; the type's guidance and steps
    come in when the user picks it (`input`), not when a restore sets it with saved values."""
    for name in VARIANT_FIELDS:
        controls[name].value = None
    kind = controls["control_type"]
    kind.change(canny_visibility, kind, [controls[name] for name in CANNY_FIELDS],
                api_visibility="private", queue=False)
    kind.input(control_type_defaults, kind, [controls[name] for name in VARIANT_FIELDS],
               api_visibility="private", queue=False)


def canny_visibility(kind: str) -> tuple:
    return tuple(gr.Slider(visible=kind == "canny") for _ in CANNY_FIELDS)


def control_type_defaults(kind: str) -> tuple:
    """The control type's guidance and steps."""
    kind = kind if kind in PRESETS.choices["control_type"].values else PRESETS.choices["control_type"].default
    return tuple(PRESETS.default(name, "control", kind) for name in VARIANT_FIELDS)


def fill_control_defaults(page: gr.Blocks, controls: dict) -> None:
    """Give the control tab's empty sliders the defaults of its control type when the page loads."""
    page.load(control_type_defaults, controls["control_type"],
              [controls[name] for name in VARIANT_FIELDS], api_visibility="private", queue=False)


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
    _, rank_limit = playground.manager.lora_ranks()
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
        with gr.Row():
            # Unchecked: the choices change as LoRAs load; the manager says when a name is unknown.
            loaded_names = Dropdown(sorted(playground.manager.lora_names()), label="Loaded LoRA", scale=3)
            unload = gr.Button("Unload", scale=1)
        loaded = gr.JSON(label="Loaded LoRAs", value=playground.manager.lora_status(), elem_id="loaded-loras")
    load_lora, unload_lora = make_lora_endpoints(playground)

    def names():
        return gr.Dropdown(choices=sorted(playground.manager.lora_names()), value=None)

    # Their own queue: a download must not hold up generation (the manager locks the accelerator
    # only to apply the LoRA).
    for button, endpoint, inputs, api_name in ((load, load_lora, [source, name], "load_lora"),
                                               (unload, unload_lora, [loaded_names], "unload_lora")):
        button.click(endpoint, inputs, loaded, api_name=api_name, concurrency_id="loras",
                     concurrency_limit=1).success(names, None, loaded_names, api_visibility="private", queue=False)
