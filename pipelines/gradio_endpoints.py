"""The Gradio endpoints: one named API route per mode, validated at queue time.

Each endpoint's parameter names are the API's parameter names (snake_case, as the hosted
FLUX APIs name them); a value left out takes its default from presets/.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipelines.fetch import InputError
from pipelines.previews import preview_image, should_preview
from pipelines.requests import (
    LORA_MODES,
    RequestError,
    ServerOffer,
    parse_request,
    with_seed,
)
from pipelines.service import GenerationError, Playground, arrival_time
from presets import PRESETS

SIZE_PARAMETERS = ("image_size", "width", "height")
# Parameters every generating endpoint takes after its own, in this order; then `loras`
# where LoRAs apply and `step_cache` (last, so that positional callers of older versions
# are unaffected).
SHARED_PARAMETERS = SIZE_PARAMETERS + (
    "num_inference_steps", "guidance_scale", "seed",
    "num_images", "output_format", "output_quality", "enable_safety_checker", "live_preview",
)


@dataclass(frozen=True)
class Endpoint:
    """One named API endpoint: its parameters, which of them a caller must give, and its
    description on the API page."""

    mode: str
    own_parameters: tuple[str, ...]
    required: tuple[str, ...]
    description: str
    sized: bool = True  # takes image_size/width/height (outpainting's size is its canvas)

    @property
    def parameters(self) -> tuple[str, ...]:
        shared = SHARED_PARAMETERS if self.sized else SHARED_PARAMETERS[len(SIZE_PARAMETERS):]
        return self.own_parameters + shared + (("loras",) if self.mode in LORA_MODES else ()) + ("step_cache",)

    @property
    def returns_control_image(self) -> bool:
        return self.mode == "control"

    def signature(self) -> inspect.Signature:
        keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
        parameters = [
            inspect.Parameter(name, keyword, default=inspect.Parameter.empty if name in self.required else None)
            for name in self.parameters
        ]
        # gradio passes these by their annotation and default: the HTTP request, the progress bar.
        parameters.append(inspect.Parameter("request", keyword, default=None, annotation=gr.Request))
        parameters.append(inspect.Parameter("progress", keyword, default=gr.Progress()))
        return inspect.Signature(parameters)


ENDPOINTS = {
    endpoint.mode: endpoint
    for endpoint in (
        Endpoint("text_to_image", ("prompt", "negative_prompt", "true_cfg_scale"), ("prompt",),
                 "Generate images from a prompt with FLUX.1 [dev]. Returns the images, the seed used "
                 "and the parameters with timings."),
        Endpoint("image_to_image", ("image", "prompt", "strength"), ("image", "prompt"),
                 "Transform an input image with a prompt (FLUX.1 [dev] image-to-image); strength sets "
                 "how much changes. By default the output has the input's size."),
        Endpoint("kontext_edit", ("image", "prompt", "negative_prompt", "true_cfg_scale"), ("image", "prompt"),
                 "Edit an image by instruction with FLUX.1 Kontext [dev]. By default the output has the "
                 "Kontext training resolution (about one megapixel) nearest the input's aspect."),
        Endpoint("redux_variation", ("image", "prompt", "prompt_embeds_scale", "pooled_prompt_embeds_scale"),
                 ("image",),
                 "Make variations of an image with FLUX.1 Redux [dev] on FLUX.1 [dev]; an optional prompt "
                 "steers them. By default the output keeps the input's aspect at about one megapixel."),
        Endpoint("inpaint", ("image", "prompt", "mask_image", "strength", "mask_blur"), ("image", "prompt"),
                 "Repaint the masked part of an image (white in mask_image, or painted layers of the image "
                 "editor's value) with FLUX.1 [dev], or FLUX.1 Fill [dev] when the server has it. Pixels "
                 "outside the mask are returned unchanged."),
        Endpoint("outpaint", ("image", "prompt", "expand_left", "expand_right", "expand_top", "expand_bottom",
                              "aspect_ratio", "strength", "mask_blur"), ("image", "prompt"),
                 "Extend an image by the given pixels on each side, or to a target aspect ratio; the output "
                 "is the padded canvas (sides multiples of 16) with the input's pixels unchanged.",
                 sized=False),
        Endpoint("control", ("image", "prompt", "control_type", "preprocess", "canny_low_threshold",
                             "canny_high_threshold"), ("image", "prompt"),
                 "Generate following the structure of an image: its Canny edges or its depth, with BFL's "
                 "FLUX.1 Canny/Depth [dev] LoRAs on FLUX.1 [dev]. Also returns the control map used."),
    )
}


class QueueGate:
    """Bounds the number of requests waiting in Gradio's queue.

    Gradio compares its queue with `max_size` before it runs an event's validator and adds
    the event after, so a burst of arrivals can all pass that check while they validate. The
    gate is asked from inside the validator and counts as waiting both the queue and the
    arrivals it admitted that the queue has not recorded yet (at most `hold_seconds` old, in
    case one never arrives)."""

    def __init__(self, max_waiting: int, hold_seconds: float = 2.0):
        self.max_waiting = max_waiting
        self.hold_seconds = hold_seconds
        self.blocks: gr.Blocks | None = None
        self._admitted: list[float] = []
        self._admitted_total = 0
        self._lock = threading.Lock()

    def attach(self, blocks: gr.Blocks) -> None:
        self.blocks = blocks

    def admit(self) -> bool:
        if self.blocks is None:
            return True
        queue = self.blocks._queue  # Gradio's queue: its length and its count of events recorded
        with self._lock:
            now = time.monotonic()
            self._admitted = [t for t in self._admitted if now - t < self.hold_seconds]
            recorded = sum(queue.events_recorded_per_fn.get(mode, 0) for mode in ENDPOINTS)
            validating = min(len(self._admitted), max(0, self._admitted_total - recorded))
            if len(queue) + validating >= self.max_waiting:
                return False
            self._admitted.append(now)
            self._admitted_total += 1
            return True


BUSY = "The server is busy: too many requests are waiting. Please try again in a moment."


def make_validator(mode: str, gate: QueueGate | None = None, offer: Callable[[], ServerOffer] = ServerOffer) -> Callable:
    """A gradio `validator=` for a mode's endpoint: it runs when the request is queued, before
    any accelerator time, marks each invalid field with a message naming its range, and turns
    requests away with a clear "busy" when too many are waiting. `offer()` says what the
    server offers now (loaded LoRAs, the Fill model)."""
    names = list(ENDPOINTS[mode].parameters)

    def validate(*values):
        problems: dict[str, str] = {}
        try:
            parse_request(mode, dict(zip(names, values, strict=True)), offer())
        except RequestError as error:
            for problem in error.errors:
                problems[problem.field] = "; ".join(filter(None, [problems.get(problem.field), problem.message]))
        if not problems and gate is not None and not gate.admit():
            # Shown on the first input, since it concerns none in particular.
            problems[names[0]] = BUSY
        return [gr.validate(name not in problems, problems.get(name, "")) for name in names]

    validate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    return validate


def caption(model: str, image) -> str:
    flagged = " · replaced: flagged by the safety checker" if image.has_nsfw_concepts else ""
    return f"{model} · seed {image.seed}{flagged}"


def make_endpoint(playground: Playground, mode: str) -> Callable:
    """The named API endpoint for `mode`: a generator whose signature is the API's parameters.

    It yields (gallery, seed used, info): previews every few steps while denoising (with
    `live_preview`), then the exact result. `predict()` returns the last; `submit()` iterates
    them all. Closing it early (the Stop button, `job.cancel()`) cancels the generation at its
    next step.
    """
    spec = ENDPOINTS[mode]
    signature = spec.signature()

    def run(*args, **kwargs) -> Iterator[tuple[list, int, dict[str, Any]]]:
        values = signature.bind(*args, **kwargs).arguments
        request, progress = values.get("request"), values.get("progress") or gr.Progress()
        try:
            parsed = with_seed(parse_request(mode, {name: values.get(name) for name in spec.parameters},
                                             playground.offer()))
        except RequestError as error:
            raise gr.Error(str(error), title="Invalid request") from None
        missing = playground.manager.missing_components(mode, getattr(parsed, "control_type", None))
        if missing:  # a mode's first request loads its weights: say so rather than sit still
            progress(0, desc=f"Loading {', '.join(missing)}")
        extras = (gr.skip(),) if spec.returns_control_image else ()  # the control map comes at the end
        scope = request.request.scope if request is not None else None
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        worker = threading.Thread(target=_execute, daemon=True, name=f"{mode}-request",
                                  args=(playground, parsed, arrival_time(scope), events, cancel))
        worker.start()
        try:
            while (event := events.get())[0] != "done":
                _, image_index, step, steps, latents = event
                progress((image_index * steps + step, parsed.num_images * steps), desc="Denoising", unit="steps")
                if parsed.live_preview and should_preview(step - 1, steps, PRESETS.preview_every_steps):
                    preview = preview_image(latents, parsed.height, parsed.width, PRESETS.preview_max_side)
                    label = f"preview · image {image_index + 1} of {parsed.num_images} · step {step}/{steps}"
                    yield [(preview, label)], parsed.seed, {"preview": True, "image_index": image_index,
                                                            "step": step, "steps": steps}, *extras
        finally:
            cancel.set()  # no-op once finished; stops a generation whose caller went away
        outcome = event[1]
        if isinstance(outcome, GenerationError):
            raise gr.Error(str(outcome), title=outcome.title)
        for warning in outcome.info["warnings"]:
            gr.Warning(warning)
        gallery = [(str(image.file), caption(outcome.model, image)) for image in outcome.images]
        if spec.returns_control_image:
            yield gallery, parsed.seed, outcome.info, str(outcome.control_image.file)
        else:
            yield gallery, parsed.seed, outcome.info

    run.__name__ = run.__qualname__ = mode
    run.__doc__ = spec.description
    run.__signature__ = signature
    run.__annotations__ = {"request": gr.Request}
    return run


def _execute(playground: Playground, parsed, received_at: float, events: queue.Queue, cancel) -> None:
    """Run a request in a worker thread, reporting steps (with latents) and the outcome as events."""

    def on_step(image_index: int, step: int, steps: int, latents) -> None:
        events.put(("step", image_index, step, steps, latents))

    try:
        events.put(("done", playground.execute(parsed, received_at, on_step, cancel)))
    except GenerationError as error:
        events.put(("done", error))


def make_lora_endpoints(playground: Playground) -> tuple[Callable, Callable]:
    """The `/load_lora` and `/unload_lora` endpoints; each returns the loaded LoRAs."""

    def load_lora(source: str, name: str | None = None) -> dict[str, Any]:
        """Load a LoRA onto the FLUX.1 [dev] transformer: a hub repository (user/repo or
        user/repo/file.safetensors), a URL to a .safetensors file, or a file in the server's
        LoRA folders. Requests apply it by name in their `loras` field ("name:weight")."""
        try:
            playground.load_lora(source, name)
        except InputError as error:
            raise gr.Error(str(error), title="LoRA not loaded") from None
        return playground.manager.lora_status()

    def unload_lora(name: str) -> dict[str, Any]:
        """Take a loaded LoRA off the FLUX.1 [dev] transformer."""
        try:
            playground.unload_lora(name)
        except InputError as error:
            raise gr.Error(str(error), title="LoRA not unloaded") from None
        return playground.manager.lora_status()

    return load_lora, unload_lora


def restorable_values(mode: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The values of a mode's controls that reproduce a saved result's parameters: every
    parameter the mode takes (the input image is not stored), at the result's exact size."""
    values = {name: parameters[name] for name in ENDPOINTS[mode].parameters
              if name in parameters and name not in ("image", "mask_image", *SIZE_PARAMETERS)}
    if "width" in parameters and "height" in parameters and ENDPOINTS[mode].sized:
        values.update(image_size="custom", width=parameters["width"], height=parameters["height"])
    return values
