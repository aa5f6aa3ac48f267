"""The History tab and restoring a saved result's parameters to its tab."""

from __future__ import annotations

import gradio as gr

from pipelines.outputs.metadata import read_parameters
from pipelines.outputs.results import ResultStore
from pipelines.service import Playground
from presets import PRESETS
from ui.endpoints import restorable_values

NOTHING_SELECTED = "Nothing to restore yet: click a result in the gallery above, then restore it."
NO_PARAMETERS = ("That image carries no parameters this playground can read. Drop a PNG, JPEG or WebP "
                 "saved by this playground (or by A1111 or Forge) to restore how it was made.")


def history_tab(playground: Playground, tab: dict, tabs: gr.Tabs) -> None:
    """Past results, newest first; a selected one's parameters (and input images) can be
    restored to its tab."""
    with gr.Tab("History", id="history") as history:
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0)
            restore = gr.Button("Restore these parameters to their tab", size="sm", elem_id="restore-history")
        gallery = gr.Gallery(label="Recent results", columns=4, height="auto", allow_preview=False,
                             elem_id="history-gallery", elem_classes=["history-gallery"])
        parameters = gr.JSON(label="Parameters of the selected result", elem_id="history-parameters")
    entries = gr.State([])

    def load_history():
        recent = playground.store.history(limit=60)
        return [(str(playground.store.folder / e["id"]), history_caption(e)) for e in recent], recent

    for event in (history.select, refresh.click):
        event(load_history, None, [gallery, entries], api_visibility="private", queue=False)

    def selected_parameters(recent: list[dict], event: gr.SelectData) -> dict:
        return recent[event.index].get("parameters", {})

    gallery.select(selected_parameters, entries, parameters, api_visibility="private", queue=False)
    restore.click(lambda values: restore_outputs(tab, values, playground.store), parameters,
                  restore_targets(tab, tabs), api_visibility="private")


def history_caption(entry: dict) -> str:
    """The prompt first (what people look for), then the mode and the seed."""
    title = PRESETS.modes[entry["mode"]].title if entry.get("mode") in PRESETS.modes else entry.get("mode", "")
    prompt = (entry.get("prompt") or "").strip() or "(no prompt)"
    return f"{prompt} · {title} · seed {entry.get('seed')}"


def restore_targets(tab: dict, tabs: gr.Tabs) -> list:
    """Every tab's controls, then the tab switcher: what a restore may update."""
    return [control for mode in tab for control in tab[mode]["controls"].values()] + [tabs]


def restore_outputs(tab: dict, parameters: dict | None, store: ResultStore) -> list:
    """Updates for `restore_targets`: the saved values, and the input images while they are
    kept, into their mode's tab, which is shown. Nothing to restore changes nothing and says so."""
    mode = (parameters or {}).get("mode")
    if mode not in tab:
        gr.Warning(NOTHING_SELECTED if not parameters else NO_PARAMETERS)
        return [gr.skip() for _ in restore_targets(tab, None)]
    values = restorable_values(mode, parameters)
    for name, result_id in (parameters.get("inputs") or {}).items():
        path = store.path(result_id)
        if path is not None and name in tab[mode]["controls"]:
            values[name] = str(path)
    updates = [values.get(name, gr.skip()) if m == mode else gr.skip()
               for m in tab for name in tab[m]["controls"]]
    return updates + [gr.Tabs(selected=mode)]


def wire_restore_from_files(tab: dict, tabs: gr.Tabs, store: ResultStore) -> None:
    """Dropping a saved image on a tab restores the parameters embedded in it (and its inputs,
    when this server still keeps them)."""

    def restore_from(path: str | None, dropped_on: str):
        parameters = read_parameters(path) if path else None
        if not parameters:
            gr.Warning(NO_PARAMETERS)
            return [gr.skip() for _ in restore_targets(tab, None)]
        # Ours name their mode; A1111's and Forge's do not: they go to the tab they were dropped on.
        return restore_outputs(tab, {"mode": dropped_on, **parameters}, store)

    for mode in tab:
        tab[mode]["restore_from"].upload(lambda path, mode=mode: restore_from(path, mode), tab[mode]["restore_from"],
                                         restore_targets(tab, tabs), api_visibility="private")
