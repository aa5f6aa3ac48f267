"""A mode tab's results: a status line that carries the progress (so that nothing covers the
images), the gallery at a fixed size, the seed, a before/after comparison in the image modes,
the parameters; and what a run leaves behind when it is stopped."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from pipelines.modes.table import Mode
from ui.components import results_column


def progress_text(image_index: int, num_images: int, step: int, steps: int) -> str:
    """"image 2 of 4 · step 13 of 50"; one image's progress needs no image count."""
    where = f"step {step} of {steps}"
    return f"image {image_index + 1} of {num_images} · {where}" if num_images > 1 else where


@dataclass
class Run:
    """One page session's request in one tab, from the queue to its end."""

    num_images: int = 1
    started: bool = False
    image_index: int = 0
    step: int = 0
    steps: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop at the next step
    ended: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # it produced its results
    before: Image.Image | None = None  # the input as the pipeline took it, for the comparison
    first_result: str | None = None

    def stopped_info(self) -> dict:
        """The info output of a stopped run, in place of a result's parameters."""
        return {"stopped": True, "image_index": self.image_index, "num_images": self.num_images,
                "step": self.step, "steps": self.steps}


def stopped_text(info: dict | None) -> str | None:
    """What the status line says after a stopped run (from its info output), else None."""
    if not info or not info.get("stopped"):
        return None
    if not info.get("steps"):
        return "**Stopped** before the first step. Nothing was generated."
    where = progress_text(info["image_index"], info.get("num_images", 1), info["step"], info["steps"])
    return f"**Stopped at {where}.** Nothing was kept: generate again to start over."


class SessionRuns:
    """The latest run of each (page session, mode): queued by the validator, begun by the
    endpoint, stopped by the tab's Stop, compared by before/after."""

    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._runs: dict[tuple, Run] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(http: gr.Request | None, mode: str) -> tuple:
        return getattr(http, "session_hash", None), mode

    def queued(self, key: tuple) -> Run:
        """A request admitted to the queue: Stop can reach it before it starts."""
        return self._put(key, Run())

    def begin(self, key: tuple, num_images: int) -> Run:
        """The run of a request that starts now: the one queued for it, if any."""
        with self._lock:
            run = self._runs.get(key)
        if run is None or run.started or run.ended.is_set():
            run = self._put(key, Run())
        run.num_images, run.started = num_images, True
        return run

    def latest(self, key: tuple) -> Run | None:
        with self._lock:
            return self._runs.get(key)

    def _put(self, key: tuple, run: Run) -> Run:
        with self._lock:
            self._runs.pop(key, None)
            self._runs[key] = run
            while len(self._runs) > self.capacity:
                self._runs.pop(next(iter(self._runs)))
        return run


@dataclass
class ResultsPanel:
    status: gr.Markdown
    gallery: gr.Gallery
    seed_used: gr.Number
    info: gr.JSON
    comparison: gr.ImageSlider | None

    @property
    def outputs(self) -> list:
        """The endpoint's outputs, in the API's order."""
        return [self.gallery, self.seed_used, self.info]


def results_panel(mode: Mode) -> ResultsPanel:
    """The results column's components, top to bottom."""
    status = gr.Markdown("", elem_id=f"{mode.name}-status", elem_classes=["run-status"], min_height=64)
    gallery, seed_used, info = results_column()
    comparison = None
    if mode.compares_to_input:
        with gr.Accordion("Before and after", open=True, elem_id=f"{mode.name}-comparison"):
            comparison = gr.ImageSlider(label="Input · result", type="pil", interactive=False, max_height=420,
                                        buttons=["fullscreen"])
    return ResultsPanel(status, gallery, seed_used, info, comparison)


def wire_results(panel: ResultsPanel, runs: SessionRuns, mode: Mode, generate: gr.Button, stop: gr.Button,
                 generation) -> None:
    """Generate clears the last run's status; Stop ends the run (queued or running) and says
    where it stopped, while the endpoint's last output empties the results, so that no
    preview or seed passes for a result; a finished run in an image mode shows its input
    against its result."""
    # In the browser: a round trip could land after a quick Stop's report and wipe it.
    generate.click(None, None, panel.status, js="() => ''", api_visibility="private", queue=False)

    def stop_run(request: gr.Request) -> None:
        # Not Gradio's `cancels`: it closes the endpoint between two outputs, and its last output
        # (a preview) could land after what Stop shows. Stopped this way, the endpoint ends at
        # its next step (or at once when it starts) with the empty result as its last output.
        run = runs.latest(SessionRuns.key(request, mode.name))
        if run is not None and not run.ended.is_set():
            run.cancel.set()

    stop.click(stop_run, None, None, api_visibility="private", queue=False)
    # After the run's last output, so nothing lands after it: where it stopped, if it did.
    generation.then(lambda info: stopped_text(info) or gr.skip(), panel.info, panel.status,
                    api_visibility="private", queue=False)
    if panel.comparison is not None:
        generate.click(None, None, panel.comparison, js="() => null", api_visibility="private", queue=False)

        def before_after(request: gr.Request):
            run = runs.latest(SessionRuns.key(request, mode.name))
            if run is None or not run.finished or run.before is None or run.first_result is None:
                return gr.skip()
            after = Image.open(run.first_result)
            return run.before.convert("RGB").resize(after.size, Image.Resampling.LANCZOS), after

        generation.success(before_after, None, panel.comparison, api_visibility="private", queue=False)


def clear_on_load(page: gr.Blocks, panels: list[ResultsPanel]) -> None:
    """Empty "Seed used" boxes when the page loads: Gradio's Number shows its None value as 0
    until something sets it (in the browser: no API route, no round trip)."""
    seeds = [panel.seed_used for panel in panels]
    page.load(None, None, seeds, js=f"() => [{', '.join(['null'] * len(seeds))}]", api_visibility="private",
              queue=False)
