"""FLUX Playground: a Gradio web playground and API server for the FLUX.1 [dev] family.

`python app.py` serves FLUX.1-dev, Kontext-dev and Redux-dev; `python app.py --demo` serves a
tiny random-weight family offline. The UI here only declares components and wires events:
requests, models and validation live in `pipelines/` and `presets/`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI

from pipelines.gradio_endpoints import (
    ENDPOINTS,
    QueueGate,
    make_endpoint,
    make_validator,
    restorable_values,
)
from pipelines.metadata import read_parameters
from pipelines.results import ResultStore
from pipelines.safety import SafetyChecker
from pipelines.service import ArrivalStamp, Playground
from pipelines.startup import limit_malloc_arenas, start_manager
from presets import CUSTOM, EXAMPLES, PRESETS
from rest import add_rest_api
from rest.common import RestSettings
from rest.inputs import FetchPolicy

log = logging.getLogger("flux_playground")

# Every generating endpoint shares one accelerator: one request at a time across all tabs.
ACCELERATOR = "accelerator"


# --- start-up ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", default=env("FLUX_DEMO") == "1",
                        help="serve the tiny offline demo family (env FLUX_DEMO=1)")
    parser.add_argument("--no-demo-fallback", action="store_true",
                        default=env("FLUX_NO_DEMO_FALLBACK") == "1",
                        help="exit instead of falling back to the demo model when the real one cannot load")
    parser.add_argument("--dev-model", help="hub id or folder of FLUX.1-dev (env FLUX_DEV_MODEL)")
    parser.add_argument("--kontext-model", help="hub id or folder of FLUX.1-Kontext-dev (env FLUX_KONTEXT_MODEL)")
    parser.add_argument("--redux-model", help="hub id or folder of FLUX.1-Redux-dev (env FLUX_REDUX_MODEL)")
    parser.add_argument("--safety-model", help="hub id or folder of the NSFW classifier run on outputs "
                        "(env FLUX_SAFETY_MODEL; Falconsai/nsfw_image_detection)")
    parser.add_argument("--safety-threshold", type=float, default=float(env("FLUX_SAFETY_THRESHOLD", "0.85")),
                        help="flag an image when its nsfw probability reaches this (env FLUX_SAFETY_THRESHOLD)")
    parser.add_argument("--device", default=env("FLUX_DEVICE", "auto"), help="auto, cuda, cuda:1, cpu… (env FLUX_DEVICE)")
    parser.add_argument("--dtype", default=env("FLUX_DTYPE", "auto"),
                        help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32 (env FLUX_DTYPE)")
    parser.add_argument("--outputs-dir", default=env("FLUX_OUTPUTS_DIR", "outputs"),
                        help="where results are written (env FLUX_OUTPUTS_DIR)")
    parser.add_argument("--retention-hours", type=float, default=float(env("FLUX_RETENTION_HOURS", "168")),
                        help="results are deleted after this many hours (env FLUX_RETENTION_HOURS; 7 days)")
    parser.add_argument("--public-url", default=env("FLUX_PUBLIC_URL"),
                        help="base of result URLs in REST responses, e.g. behind a proxy (env FLUX_PUBLIC_URL)")
    parser.add_argument("--allow-private-urls", action="store_true", default=env("FLUX_ALLOW_PRIVATE_URLS") == "1",
                        help="let image URLs point at private, loopback and link-local addresses "
                             "(env FLUX_ALLOW_PRIVATE_URLS=1)")
    parser.add_argument("--max-queue", type=int, default=int(env("FLUX_MAX_QUEUE", "16")),
                        help="requests that may wait for the accelerator; more are told the server is busy "
                             "(env FLUX_MAX_QUEUE)")
    parser.add_argument("--time-limit", type=float, default=float(env("FLUX_TIME_LIMIT", "600")),
                        help="seconds a request may run before it is stopped; 0 for none (env FLUX_TIME_LIMIT)")
    parser.add_argument("--max-upload-mb", type=float, default=float(env("FLUX_MAX_UPLOAD_MB", "20")),
                        help="largest input image accepted, uploaded or fetched (env FLUX_MAX_UPLOAD_MB)")
    parser.add_argument("--auth", default=env("FLUX_AUTH"),
                        help="require a login for the page: user:password[,user:password…] (env FLUX_AUTH)")
    parser.add_argument("--api-key", default=env("FLUX_API_KEY"),
                        help="require this key on the REST routes (env FLUX_API_KEY)")
    parser.add_argument("--monitoring", action="store_true", default=env("FLUX_MONITORING") == "1",
                        help="enable Gradio's monitoring dashboard (env FLUX_MONITORING=1)")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")),
                        help="port to listen on (env GRADIO_SERVER_PORT)")
    return parser.parse_args(argv)


# --- layout -------------------------------------------------------------------------------------


# Gradio's Slider, Number, Dropdown, Radio and Image check values in `preprocess` and refuse
# bad API values with a message that names no field (and, before a validator, no message at
# all). These subclasses hand values to the endpoint unchecked; the request validator checks
# every one against presets/ and names the field and its range. `is_template` keeps each
# parent's frontend component. (Gradio writes a stub `app.pyi` for them; it is ignored.)


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


def slider(name: str, mode: str | None = None, **options) -> gr.Slider:
    spec = PRESETS.field(name)
    return Slider(spec.min, spec.max, value=PRESETS.default(name, mode), step=spec.step,
                  label=spec.label, info=spec.info or None, **options)


def settings_controls(mode: str) -> dict[str, gr.Component]:
    """The controls every mode shares, with ranges and defaults from presets/."""
    size_default = PRESETS.modes[mode].image_size
    controls: dict[str, gr.Component] = {}
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            controls["image_size"] = Dropdown(
                list(PRESETS.size_choices(mode)), value=size_default, label="Image size",
                info="A preset, match_input (follow the input image) or custom.",
            )
            controls["num_images"] = slider("num_images")
        with gr.Row(visible=size_default == CUSTOM) as custom_row:
            controls["width"] = slider("width")
            controls["height"] = slider("height")
        controls["image_size"].change(
            lambda choice: gr.Row(visible=choice == CUSTOM), controls["image_size"], custom_row,
            api_visibility="private", queue=False,
        )
        with gr.Row():
            controls["num_inference_steps"] = slider("num_inference_steps")
            controls["guidance_scale"] = slider("guidance_scale", mode)
        seed = PRESETS.field("seed")
        with gr.Row():
            controls["seed"] = Number(value=seed.default, precision=0, label=seed.label, info=seed.info)
            controls["output_format"] = Radio(list(PRESETS.output_formats),
                                              value=PRESETS.default_output_format, label="Output format")
        controls["output_quality"] = slider("output_quality")
        with gr.Row():
            for name in ("enable_safety_checker", "live_preview"):
                flag = PRESETS.flags[name]
                controls[name] = gr.Checkbox(value=flag.default, label=flag.label, info=flag.info)
    return controls


def results_column() -> tuple[gr.Gallery, gr.Number, gr.JSON]:
    gallery = gr.Gallery(label="Results", columns=2, height="auto", object_fit="contain", interactive=False)
    seed_used = gr.Number(value=None, label="Seed used", precision=0, interactive=False)
    with gr.Accordion("Parameters used", open=False):
        info = gr.JSON(label="Parameters and timings")
    return gallery, seed_used, info


def wire(playground: Playground, gate: QueueGate, mode: str, button: gr.Button, controls: dict, outputs: list):
    """Bind a tab's Generate button to its endpoint: one named API route per mode."""
    names = ENDPOINTS[mode].parameters
    return button.click(
        make_endpoint(playground, mode), [controls[name] for name in names], outputs, api_name=mode,
        validator=make_validator(mode, gate),
        concurrency_id=ACCELERATOR, concurrency_limit=1,
    )


def image_input(label: str) -> gr.Image:
    return Image(label=label, type="filepath", sources=["upload", "clipboard"], height=360)


def mode_tab(playground: Playground, gate: QueueGate, mode: str, build_inputs, add_to_results=None) -> dict:
    """A tab: its own inputs (from `build_inputs`), the shared settings, results and examples.
    `add_to_results(controls, outputs)` may add controls under the results."""
    with gr.Tab(PRESETS.modes[mode].title, id=mode):
        with gr.Row():
            with gr.Column(scale=5):
                controls = build_inputs()
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                controls.update(settings_controls(mode))
            with gr.Column(scale=6):
                outputs = results_column()
                if add_to_results:
                    add_to_results(controls, outputs)
        example_fields = list(EXAMPLES[mode][0]) if EXAMPLES[mode] else []
        if example_fields:
            gr.Examples([[ex[k] for k in example_fields] for ex in EXAMPLES[mode]],
                        [controls[k] for k in example_fields], label="Examples")
        generation = wire(playground, gate, mode, button, controls, list(outputs))
        # Stopping closes the endpoint's stream, which cancels the generation at its next step.
        stop.click(None, None, None, cancels=[generation], api_visibility="private", queue=False)
        with gr.Accordion("Restore parameters from a saved image", open=False):
            saved = gr.File(label="Drop a PNG, JPEG or WebP saved by this playground", file_types=["image"],
                            elem_id=f"restore-{mode}")
    return {"controls": controls, "restore_from": saved}


def prompt_box(label="Prompt", placeholder="Describe the image", lines=3) -> gr.Textbox:
    return gr.Textbox(label=label, placeholder=placeholder, lines=lines, max_lines=8)


def negative_prompt_controls() -> dict[str, gr.Component]:
    with gr.Accordion("Negative prompt (true CFG)", open=False):
        return {
            "negative_prompt": gr.Textbox(label="Negative prompt", lines=1, info="Used when true CFG scale is above 1."),
            "true_cfg_scale": slider("true_cfg_scale"),
        }


def build_ui(playground: Playground, gate: QueueGate) -> gr.Blocks:
    with gr.Blocks(title="FLUX Playground") as demo:
        gr.Markdown("# FLUX Playground\nFLUX.1 [dev], Kontext [dev] and Redux [dev] on one resident "
                    "pipeline manager. Every tab is also an API endpoint: see *Use via API* below.")
        if playground.demo_reason:
            gr.Markdown(
                f"**Demo mode:** {playground.demo_reason}. Results come from a tiny random-weight "
                "model and look like noise; sizes, seeds and timings behave as with FLUX.1-dev.",
                elem_id="demo-banner", elem_classes=["demo-banner"],
            )
        with gr.Tabs() as tabs:
            tab = {
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
            }
            history_tab(playground, tab, tabs)
        wire_restore_from_files(tab, tabs)
        with gr.Accordion("Model status", open=False):
            status = gr.JSON(label="Pipeline manager")
            refresh = gr.Button("Refresh", size="sm")
        refresh.click(playground.status, None, status, api_name="status")
        demo.load(playground.status, None, status, api_visibility="private")
    return demo


def history_tab(playground: Playground, tab: dict, tabs: gr.Tabs) -> None:
    """Past results, newest first; a selected one's parameters can be restored to its tab."""
    with gr.Tab("History", id="history") as history:
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0)
            restore = gr.Button("Restore these parameters to their tab", size="sm", elem_id="restore-history")
        gallery = gr.Gallery(label="Recent results", columns=6, height="auto", allow_preview=False,
                             elem_id="history-gallery")
        parameters = gr.JSON(label="Parameters of the selected result", elem_id="history-parameters")
    entries = gr.State([])

    def load_history():
        recent = playground.store.history(limit=60)
        items = [(str(playground.store.folder / e["id"]), f"{e['mode']} · seed {e['seed']} · {e['prompt'][:60]}")
                 for e in recent]
        return items, recent

    for event in (history.select, refresh.click):
        event(load_history, None, [gallery, entries], api_visibility="private", queue=False)
    def selected_parameters(recent: list[dict], event: gr.SelectData) -> dict:
        return recent[event.index].get("parameters", {})

    gallery.select(selected_parameters, entries, parameters, api_visibility="private", queue=False)
    restore.click(lambda values: restore_outputs(tab, values), parameters, restore_targets(tab, tabs),
                  api_visibility="private", queue=False)


def restore_targets(tab: dict, tabs: gr.Tabs) -> list:
    """Every tab's controls, then the tab switcher: what a restore may update."""
    return [control for mode in tab for control in tab[mode]["controls"].values()] + [tabs]


def restore_outputs(tab: dict, parameters: dict | None) -> list:
    """Updates for `restore_targets`: the saved values into their mode's tab, which is shown."""
    mode = (parameters or {}).get("mode")
    if mode not in tab:
        raise gr.Error("Select a result saved by this playground first.")
    values = restorable_values(mode, parameters)
    updates = [values.get(name, gr.skip()) if m == mode else gr.skip()
               for m in tab for name in tab[m]["controls"]]
    return updates + [gr.Tabs(selected=mode)]


def wire_restore_from_files(tab: dict, tabs: gr.Tabs) -> None:
    """Dropping a saved image on a tab restores the parameters embedded in it."""

    def restore_from(path: str | None):
        parameters = read_parameters(path) if path else None
        if not parameters:
            raise gr.Error("That image carries no parameters this playground can read.")
        return restore_outputs(tab, parameters)

    for mode in tab:
        tab[mode]["restore_from"].upload(restore_from, tab[mode]["restore_from"], restore_targets(tab, tabs),
                                         api_visibility="private", queue=False)


def add_iterative_editing(controls: dict, outputs: tuple) -> None:
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


def logins(auth: str | None) -> list[tuple[str, str]] | None:
    """"user:password,user2:password2" as Gradio's list of (user, password)."""
    if not auth:
        return None
    pairs = [entry.split(":", 1) for entry in auth.split(",") if entry.strip()]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise SystemExit("--auth must be user:password[,user:password...]")
    return [(user.strip(), password) for user, password in pairs]


def create_server(args: argparse.Namespace) -> tuple[FastAPI, Playground]:
    """One process, one manager: the REST APIs and the Gradio page and API on one FastAPI app."""
    manager, demo_reason = start_manager(args)
    store = ResultStore(Path(args.outputs_dir), retention_seconds=args.retention_hours * 3600)
    store.start_sweeper()
    safety = SafetyChecker(manager.sources.safety, manager.placement.device, args.safety_threshold,
                           local_files_only=manager.local_files_only)
    playground = Playground(manager, store, demo_reason, safety, max_waiting=args.max_queue,
                            time_limit_seconds=args.time_limit)
    app = FastAPI(title="FLUX Playground", description=__doc__, docs_url="/docs", redoc_url=None)
    app.add_middleware(ArrivalStamp)
    max_bytes = int(args.max_upload_mb * 1024 * 1024)
    settings = RestSettings(fetch=FetchPolicy(allow_private=args.allow_private_urls, max_bytes=max_bytes),
                            public_url=args.public_url, api_key=args.api_key)
    add_rest_api(app, playground, settings)  # before Gradio takes `/`
    app.state.rest_settings = settings
    gate = QueueGate(args.max_queue)
    demo = build_ui(playground, gate)
    gate.attach(demo)
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    # Results are served by id; the history index (every prompt) is not served at all.
    app = gr.mount_gradio_app(app, demo, path="/", allowed_paths=[str(store.folder)],
                              blocked_paths=[str(store.index_path)], auth=logins(args.auth),
                              max_file_size=max_bytes, enable_monitoring=args.monitoring)
    return app, playground


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    limit_malloc_arenas()
    app, _ = create_server(args)
    log.info("FLUX Playground on http://%s:%d/ (REST API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
