"""The page: tabs, history and status. It only declares components and wires events; requests,
models and validation live in `pipelines/` and `presets/`."""

from __future__ import annotations

import gradio as gr

from pipelines.service import Playground
from ui.history import history_tab, wire_restore_from_files
from ui.results import clear_on_load
from ui.tabs import fill_variant_defaults, lora_tab, mode_tabs


def build_ui(playground: Playground) -> gr.Blocks:
    with gr.Blocks(title="FLUX Playground") as demo:
        gr.Markdown("# FLUX Playground\nFLUX.1 [dev], Kontext [dev], Redux [dev], inpainting, outpainting, "
                    "structural control and LoRAs on one resident pipeline manager. Every tab is also an API "
                    "endpoint: see *Use via API* below.")
        if playground.demo_reason:
            gr.Markdown(
                f"**Demo mode:** {playground.demo_reason}. Results come from a tiny random-weight "
                "model and look like noise; sizes, seeds and timings behave as with FLUX.1-dev.",
                elem_id="demo-banner", elem_classes=["demo-banner"],
            )
        with gr.Tabs() as tabs:
            tab = mode_tabs(playground)
            lora_tab(playground)
            history_tab(playground, tab, tabs)
        wire_restore_from_files(tab, tabs, playground.store)
        clear_on_load(demo, [tab[mode]["results"] for mode in tab])
        fill_variant_defaults(demo, tab)
        with gr.Accordion("Model status", open=False):
            status = gr.JSON(label="Pipeline manager")
            refresh = gr.Button("Refresh", size="sm")
        refresh.click(playground.status, None, status, api_name="status")
        demo.load(playground.status, None, status, api_visibility="private")
    return demo
