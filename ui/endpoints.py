"""The Gradio endpoints: one named API route per mode of the table, validated at queue time.

Each endpoint's parameter names are the API's parameter names (snake_case, as the hosted
FLUX APIs name them); a value left out takes its default from presets/. The validator parses
a request once, with `Playground.parse`, and hands it on to the endpoint.
"""

from __future__ import annotations

import inspect
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from pipelines.errors import FieldError
from pipelines.imaging.previews import preview_image, should_preview
from pipelines.loras.sources import available_loras
from pipelines.modes.request_types import GenerationRequest, ServerCapabilities
from pipelines.modes.table import MODES, Mode
from pipelines.service import GenerationCancelled, GenerationError, Playground, ServerBusy
from presets import PRESETS
from rest.arrival import arrival_time
from ui.api_docs import endpoint_docstring
from ui.results import Run, SessionRuns, progress_text

SIZE_PARAMETERS = ("image_size", "width", "height")
# Parameters every generating endpoint takes after its own, in this order; then `loras`
# where LoRAs apply and `step_cache` (last, so that positional callers of older versions
# are unaffected).
SHARED_PARAMETERS = SIZE_PARAMETERS + (
    "num_inference_steps", "guidance_scale", "seed",
    "num_images", "output_format", "output_quality", "enable_safety_checker", "live_preview",
)
# Progress goes to the page and the client at most this often: each update is a message every
# client parses, and on a small model a message per step slowed denoising itself (bench/RESULTS.md).
PROGRESS_INTERVAL_SECONDS = 0.25
BUSY = "The server is busy: too many requests are waiting. Please try again in a moment."


def endpoint_parameters(mode: Mode) -> tuple[str, ...]:
    """A mode's endpoint parameters, in order."""
    shared = SHARED_PARAMETERS if mode.sized else SHARED_PARAMETERS[len(SIZE_PARAMETERS):]
    return mode.parameters + shared + (("loras",) if mode.route.takes_loras else ()) + ("step_cache",)


def endpoint_signature(mode: Mode) -> inspect.Signature:
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter(name, keyword, default=inspect.Parameter.empty if name in mode.required else None)
        for name in endpoint_parameters(mode)
    ]
    # gradio passes these by their annotation and default: the HTTP request, the progress bar.
    parameters.append(inspect.Parameter("request", keyword, default=None, annotation=gr.Request))
    parameters.append(inspect.Parameter("progress", keyword, default=gr.Progress()))
    return inspect.Signature(parameters)


class ParsedRequests:
    """Requests the validator parsed, kept for the endpoint run of the same event, so that
    nothing is parsed (or decoded) twice. Keyed by session, mode and the raw values; a
    request parsed under other capabilities (a LoRA unloaded meanwhile) is parsed again."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._parsed: OrderedDict[tuple, list[tuple[ServerCapabilities, GenerationRequest]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(http: gr.Request | None, mode: str, values: list) -> tuple:
        return (getattr(http, "session_hash", None), mode, repr(values))

    def keep(self, key: tuple, capabilities: ServerCapabilities, request: GenerationRequest) -> None:
        with self._lock:
            self._parsed.setdefault(key, []).append((capabilities, request))
            while len(self._parsed) > self.capacity:
                self._parsed.popitem(last=False)

    def take(self, key: tuple, capabilities: ServerCapabilities) -> GenerationRequest | None:
        with self._lock:
            kept = self._parsed.get(key)
            if not kept:
                return None
            parsed_under, request = kept.pop(0)
            if not kept:
                del self._parsed[key]
        return request if parsed_under == capabilities else None


def from_the_page(request: gr.Request | None) -> bool:
    """Whether the page sent the request: its client says so in this header, where gradio_client
    and Gradio's JavaScript client send "api"."""
    return request is not None and request.headers.get("x-gradio-user") == "app"


def after_field(field: str, message: str) -> str | None:
    """What follows the field's name where a message starts with it (" must be …", ": …"), else None."""
    rest = message.removeprefix(field)
    return rest if rest != message and rest[:1] in (" ", ":") else None


def api_words(field: str, message: str) -> str:
    """A problem as API clients get it: after its field's name (gradio_client lists problems as
    `- field: message`), so without that name in front; other fields keep their API names."""
    rest = after_field(field, message)
    return message if rest is None else rest.lstrip(": ")


def page_words(field: str, message: str, labels: dict[str, str]) -> str:
    """A problem as the page shows it next to its control: a sentence naming fields by their
    labels (the problem's own field where it leads the message; other fields' API names, which
    have underscores, wherever they appear; plain words like "image" stay words)."""
    rest = after_field(field, message)
    if rest is not None:
        message = labels.get(field, field) + rest
    named = [name for name in labels if "_" in name]
    if named:
        message = re.sub(rf"\b({'|'.join(named)})\b", lambda match: labels[match.group(1)], message)
    return message[:1].upper() + message[1:] + ("" if message.endswith((".", "?", "!")) else ".")


def make_validator(playground: Playground, mode: str, parsed: ParsedRequests | None = None,
                   runs: SessionRuns | None = None) -> Callable:
    """A gradio `validator=` for a mode's endpoint: it runs when the request is queued, before
    any accelerator time, marks each invalid field with a message naming its range, and turns
    requests away with a clear "busy" when the accelerator's line is full (a valid one gets a
    place reserved in it). A valid request is kept in `parsed` for the endpoint. The page gets each message in its own words (`page_words`), API
    clients in the API's (`api_words`)."""
    names = list(endpoint_parameters(MODES[mode]))
    labels = {name: PRESETS.label(name, mode) for name in names}

    def validate(*values_and_request):
        # gradio passes the inputs, then the HTTP request where the signature names it.
        values, request = values_and_request[:len(names)], (values_and_request[len(names):] or (None,))[0]
        on_page = from_the_page(request)
        words = (lambda field, message: page_words(field, message, labels)) if on_page else api_words
        problems: dict[str, list[str]] = {}
        capabilities = playground.capabilities()
        try:
            parsed_request = playground.parse(mode, dict(zip(names, values, strict=True)), capabilities)
        except FieldError as error:
            for problem in error.problems:
                problems.setdefault(problem.field, []).append(words(problem.field, problem.message))
        if not problems and not playground.queue.reserve():
            # Shown on the first input, since it concerns none in particular.
            problems[names[0]] = [BUSY]
        if not problems and parsed is not None:
            parsed.keep(ParsedRequests.key(request, mode, list(values)), capabilities, parsed_request)
        if not problems and runs is not None:
            runs.queued(SessionRuns.key(request, mode))
        separator = " " if on_page else "; "
        return [gr.validate(name not in problems, separator.join(problems.get(name, []))) for name in names]

    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    validate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, keyword) for name in names]
        + [inspect.Parameter("request", keyword, default=None, annotation=gr.Request)]
    )
    validate.__annotations__ = {"request": gr.Request}  # how gradio finds where to pass the request
    return validate


def caption(model: str, image) -> str:
    flagged = " · replaced: flagged by the safety checker" if image.has_nsfw_concepts else ""
    return f"{model} · seed {image.seed}{flagged}"


def make_endpoint(playground: Playground, mode: str, parsed: ParsedRequests | None = None,
                  runs: SessionRuns | None = None) -> Callable:
    """The named API endpoint for `mode`: a generator whose signature is the API's parameters.

    It yields (gallery, seed used, info): previews every few steps while denoising (with
    `live_preview`), then the exact result. `predict()` returns the last; `submit()` iterates
    them all. Closing it early (the Stop button, `job.cancel()`) cancels the generation at its
    next step.
    """
    spec = MODES[mode]
    names = endpoint_parameters(spec)
    signature = endpoint_signature(spec)

    def run(*args, **kwargs) -> Iterator[tuple[list, int, dict[str, Any]]]:
        values = signature.bind(*args, **kwargs).arguments
        http, progress = values.get("request"), values.get("progress") or gr.Progress()
        raw = [values.get(name) for name in names]
        request = parsed.take(ParsedRequests.key(http, mode, raw), playground.capabilities()) if parsed else None
        if request is None:  # not validated here (or under other capabilities): parse now
            try:
                request = playground.parse(mode, dict(zip(names, raw, strict=True)))
            except FieldError as error:
                raise gr.Error(str(error), title="Invalid request") from None
        missing = playground.missing_components(request)
        if missing:  # a mode's first request loads its weights: say so rather than sit still
            progress(0, desc=f"Loading {', '.join(missing)}")
        run = (runs or SessionRuns()).begin(SessionRuns.key(http, mode), request.num_images)
        if run.cancel.is_set():  # stopped while it waited in the queue
            run.ended.set()
            yield _stopped(spec, run)
            return
        try:  # its place in the line, reserved by the validator
            ticket = playground.enqueue(request, arrival_time(http.request.scope if http else None), reserved=True)
        except ServerBusy:
            run.ended.set()
            raise gr.Error(BUSY, title="Busy") from None
        yield from _results(playground, spec, request, ticket, progress, run)

    run.__name__ = run.__qualname__ = mode
    run.__doc__ = endpoint_docstring(spec, spec.variant({}, playground.fill), names)
    run.__signature__ = signature
    run.__annotations__ = {"request": gr.Request}
    return run


def _results(playground: Playground, mode: Mode, request: GenerationRequest, ticket, progress, run: Run):
    """Run the request in a worker thread when its `ticket`'s turn comes; yield its previews,
    then its result. `run` follows where it is, for the page's Stop and before/after."""
    extras = (gr.skip(),) if mode.returns_control_image else ()  # the control map comes at the end
    events: queue.Queue = queue.Queue()
    worker = threading.Thread(target=_execute, daemon=True, name=f"{mode.name}-request",
                              args=(playground, request, ticket, events, run.cancel))
    worker.start()
    reported = 0.0
    try:
        while (event := events.get())[0] != "done":
            if event[0] == "wait":  # in line behind other requests, from here or any API
                progress(0.0, desc=waiting_text(*event[1:]))  # a number, or the page hides the text
                continue
            _, image_index, step, steps, latents = event
            run.image_index, run.step, run.steps = image_index, step, steps
            if time.monotonic() - reported >= PROGRESS_INTERVAL_SECONDS:
                reported = time.monotonic()
                progress((step, steps), desc=progress_text(image_index, request.num_images, step, steps), unit="steps")
            if request.live_preview and should_preview(step - 1, steps, PRESETS.preview_every_steps):
                preview = preview_image(latents, request.height, request.width, PRESETS.preview_max_side)
                label = f"preview · {progress_text(image_index, request.num_images, step, steps)}"
                yield [(preview, label)], request.seed, {"preview": True, "image_index": image_index,
                                                         "step": step, "steps": steps}, *extras
        outcome = event[1]
        if not isinstance(outcome, GenerationError):
            run.finished, run.first_result = True, str(outcome.images[0].file)
            run.before = getattr(outcome.request, "image", None) if mode.compares_to_input else None
    finally:
        run.cancel.set()  # no-op once finished; stops a generation whose caller went away
        run.ended.set()
    if isinstance(outcome, GenerationCancelled):  # the page's Stop: nothing is kept
        yield _stopped(mode, run)
        return
    if isinstance(outcome, GenerationError):
        raise gr.Error(str(outcome), title=outcome.title)
    for warning in outcome.info["warnings"]:
        gr.Warning(warning)
    gallery = [(str(image.file), caption(outcome.model, image)) for image in outcome.images]
    if mode.returns_control_image:
        yield gallery, request.seed, outcome.info, str(outcome.control_image.file)
    else:
        yield gallery, request.seed, outcome.info


def _stopped(mode: Mode, run: Run) -> tuple:
    """The last output of a run the page stopped: no images, no seed, where it stopped."""
    return [], None, run.stopped_info(), *((None,) if mode.returns_control_image else ())


def waiting_text(ahead: int, seconds: float | None) -> str:
    """Where a request stands in the line: "Waiting: 2 requests ahead · about 14 s"."""
    place = "next in line" if ahead == 0 else f"{ahead} request{'s' if ahead > 1 else ''} ahead"
    return f"Waiting: {place}" + (f" · about {seconds:.0f} s" if seconds else "")


def _execute(playground: Playground, request, ticket, events: queue.Queue, cancel) -> None:
    """Run a request in a worker thread, reporting its place while it waits, its steps (with
    latents) and the outcome as events."""

    def on_wait(ahead: int, seconds: float | None) -> None:
        events.put(("wait", ahead, seconds))

    def on_step(image_index: int, step: int, steps: int, latents) -> None:
        events.put(("step", image_index, step, steps, latents))

    try:
        events.put(("done", playground.execute(request, ticket.arrival, on_step, cancel, ticket=ticket,
                                               on_wait=on_wait)))
    except GenerationError as error:
        events.put(("done", error))


def make_lora_endpoints(playground: Playground) -> tuple[Callable, Callable, Callable]:
    """The `/load_lora`, `/unload_lora` and `/list_loras` endpoints; the first two return the
    loaded LoRAs, or raise gr.Error saying what to do. Their type hints are their API's (`gr.api`)."""

    def load_lora(source: str, name: str | None = None) -> dict[str, Any]:
        """Load a LoRA onto the FLUX.1 [dev] transformer: a hub repository (user/repo or
        user/repo/file.safetensors), a URL to a .safetensors file, or a file in the server's
        LoRA folders. Requests apply it by name in their `loras` field ("name:weight")."""
        progress = gr.Progress()  # finds the running event when called: for the page and API callers alike

        def report(stage: str, fraction: float | None) -> None:
            progress(fraction, desc=stage)

        try:
            playground.load_lora(source, name, report)
        except FieldError as error:
            raise gr.Error(str(error), title="LoRA not loaded") from None
        return playground.manager.loras.status()

    def unload_lora(name: str) -> dict[str, Any]:
        """Take a loaded LoRA off the FLUX.1 [dev] transformer."""
        try:
            playground.unload_lora(name)
        except FieldError as error:
            raise gr.Error(str(error), title="LoRA not unloaded") from None
        return playground.manager.loras.status()

    def list_loras() -> dict[str, Any]:
        """The LoRAs loaded on the FLUX.1 [dev] transformer (by name, with source, rank and size),
        and the files in the server's LoRA folders that `load_lora` takes by name."""
        return {"loaded": playground.manager.loras.status(), "available": available_loras(playground.lora_sources)}

    return load_lora, unload_lora, list_loras


def restorable_values(mode: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The values of a mode's controls that reproduce a saved result's parameters: every
    parameter the mode takes (the input image is not stored), at the result's exact size."""
    spec = MODES[mode]
    values = {name: parameters[name] for name in endpoint_parameters(spec)
              if name in parameters and name not in ("image", "mask_image", *SIZE_PARAMETERS)}
    if "width" in parameters and "height" in parameters and spec.sized:
        values.update(image_size="custom", width=parameters["width"], height=parameters["height"])
    return values
