"""The History tab and restoring a saved result's parameters to its tab."""

from __future__ import annotations

import gradio as gr

from pipelines.outputs.metadata import read_parameters
from pipelines.service import Playground
from ui.endpoints import restorable_values


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
