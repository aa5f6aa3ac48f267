"""The playground's service: the one way in for the page, gradio_client and every REST API.

raw values -> `Playground.parse` (validation, seed, images decoded once) -> `Playground.execute`
(a ticket in the one line, `AcceleratorQueue` -> its turn on the accelerator -> safety ->
store). Only this service takes the accelerator and prepares a request; the Gradio endpoints
(`ui/`), the REST routes (`rest/`) and the job runner (`pipelines/jobs/`) are thin adapters
over it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from safetensors import SafetensorError

from pipelines.accelerator_queue import AcceleratorQueue, Ticket, WaitCallback, request_work
# The adapters import the request errors from here too.
from pipelines.errors import FieldError, GenerationCancelled, GenerationError, ServerBusy  # noqa: F401
from pipelines.fetch import FetchPolicy
from pipelines.imaging.images import MIME_TYPES, encode_image
from pipelines.loras.adapters import UserLora, load_failure
from pipelines.loras.hub import HubAccess, Report, quiet
from pipelines.loras.sources import LoraSourcePolicy, default_name, fetch_lora, given_source
from pipelines.models.acceleration import request_cache_kind
from pipelines.models.manager import PipelineManager
from pipelines.models.memory_plan import MemoryPlan
from pipelines.modes.fields import format_loras
from pipelines.modes.generation import StepCache, StepCallback, generate
from pipelines.modes.parsing import parse_request
from pipelines.modes.prompts import truncation_warnings
from pipelines.modes.request_types import (
    GenerationRequest,
    ServerCapabilities,
    with_seed,
)
from pipelines.modes.table import MODES
from pipelines.outputs.metadata import encode_with_parameters, image_info
from pipelines.outputs.results import ResultStore
from pipelines.outputs.safety import SafetyChecker, blank_like

log = logging.getLogger("flux_playground")

try:  # On a ZeroGPU Space, `spaces.GPU` attaches a GPU for the call; elsewhere a no-op.
    import spaces

    on_accelerator = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the deployment

    def on_accelerator(fn: Callable) -> Callable:
        return fn


@dataclass
class StoredImage:
    result_id: str
    file: Path
    seed: int
    width: int
    height: int
    content_type: str
    has_nsfw_concepts: bool


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the seed actually used
    request_id: str
    model: str
    images: list[StoredImage]
    queued_ms: int
    executed_ms: int
    info: dict[str, Any] = field(default_factory=dict)
    control_image: StoredImage | None = None  # a control request's edge or depth map

    @property
    def has_nsfw_concepts(self) -> list[bool]:
        return [image.has_nsfw_concepts for image in self.images]


@dataclass
class Generated:
    """What one run on an accelerator gives back: the request as run (a control map added),
    its images, their safety flags, the warnings, when it started and finished (this
    process's time.monotonic()), and which worker ran it when not this process."""

    request: GenerationRequest
    images: list[Image.Image]
    flags: list[bool]
    warnings: list[str]
    started: float
    finished: float
    worker: str | None = None


class Runner(Protocol):
    """Where `generate_here`'s work runs: by default here, on this process's manager; a Ray
    Serve runner (deploy/) sends it to a worker instead. `capacity`: requests it runs at once.
    Users' LoRAs then live on the workers' transformers: `load_lora` checks that one loads the
    file and returns its record; every worker takes it up before its first request naming it."""

    capacity: int

    def run(self, request: GenerationRequest, request_id: str, on_step: StepCallback | None,
            cancel: threading.Event | None) -> Generated: ...

    def load_lora(self, file: Path, name: str, source: str) -> UserLora: ...

    def unload_lora(self, name: str) -> None: ...

    def status(self) -> dict[str, Any]: ...


def time_limit_error(seconds: float) -> GenerationError:
    return GenerationError(f"The request took longer than the time limit of {seconds:g} s and was stopped. "
                           "Try fewer steps, a smaller size or fewer images.", title="Time limit")


def request_info(request: GenerationRequest) -> dict[str, Any]:
    """The parameters a result was made with, as shown next to it and returned by the APIs."""
    info: dict[str, Any] = {"mode": request.mode}
    for item in fields(request):
        value = getattr(request, item.name)
        if item.name == "image":
            info["input_image_size"] = list(value.size)
        elif item.name == "loras":
            info["loras"] = format_loras(value)
        elif item.name == "inputs":
            continue  # images: `execute` names them by the ids they are stored under
        elif not isinstance(value, Image.Image) and value is not None:  # masks and maps are not parameters
            info[item.name] = value
    info["seeds"] = request.seeds()
    return info


class Playground:
    """The service: one pipeline manager, one result store, optionally a safety checker."""

    def __init__(self, manager: PipelineManager, store: ResultStore, demo_reason: str | None = None,
                 safety: SafetyChecker | None = None, max_waiting: int = 16, time_limit_seconds: float = 0,
                 lora_sources: LoraSourcePolicy | None = None, memory_plan: MemoryPlan | None = None,
                 runner: Runner | None = None):
        self.manager = manager
        self.runner = runner  # None: generate here, under this process's accelerator
        self.memory_plan = memory_plan  # chosen at start (startup.plan_memory), shown in `/status`
        self.lora_sources = lora_sources or LoraSourcePolicy((Path("loras"),), FetchPolicy())
        self.store = store
        self.demo_reason = demo_reason
        self.safety = safety
        # Every way in waits in this one line; beyond `max_waiting` behind the one running, busy.
        self.queue = AcceleratorQueue(max_waiting, max_running=runner.capacity if runner else 1)
        self.time_limit_seconds = time_limit_seconds  # 0: no limit
        self._lora_changes = threading.Lock()  # one LoRA load or unload at a time

    @property
    def outputs_dir(self) -> Path:
        return self.store.folder

    def status(self) -> dict[str, Any]:
        """The pipeline manager's state, the safety checker's and why the demo runs, if it does."""
        state = self.manager.status()
        state["models"] = {name: self.manager.sources.label(mode.route_for(self.fill).models)
                           for name, mode in MODES.items()}
        state["demo_reason"] = self.demo_reason
        if self.memory_plan is not None:
            state["plan"] = self.memory_plan.status()
        if self.safety is not None:
            state["safety_checker"] = self.safety.status()
        if self.runner is not None:
            state["workers"] = self.runner.status()
        return state

    def capabilities(self) -> ServerCapabilities:
        """What requests may use now: the Fill model, the loaded LoRAs."""
        ranks, limit = self.manager.loras.ranks()
        return ServerCapabilities(fill=self.fill, loras=frozenset(ranks), lora_ranks=ranks, lora_rank_limit=limit)

    @property
    def fill(self) -> bool:
        """FLUX.1-Fill-dev is configured: inpainting and outpainting run on it."""
        return bool(self.manager.sources.fill)

    def parse(self, mode: str, raw: Mapping[str, Any],
              capabilities: ServerCapabilities | None = None) -> GenerationRequest:
        """The one parse: raw values -> a validated request with its seed resolved, or a
        FieldError naming every invalid field. `capabilities`: as the caller read them (now)."""
        return with_seed(parse_request(mode, raw, capabilities or self.capabilities()))

    def missing_components(self, request: GenerationRequest) -> list[str]:
        """What the request's mode still has to load (its first request pays for it)."""
        mode = MODES[request.mode]
        return self.manager.missing_components(mode.route_for(self.fill).pipelines, mode.control(request))

    def model_label(self, request: GenerationRequest) -> str:
        """The models a request runs on, as shown with its results."""
        mode = MODES[request.mode]
        return self.manager.sources.label(mode.route_for(self.fill).models, mode.control(request))

    def load_lora(self, source: str, name: str | None = None, report: Report = quiet) -> dict[str, Any]:
        """Load a user's LoRA (hub id, URL or a file in the LoRA folders) onto the dev
        transformer, reporting each stage to `report`; raises FieldError saying what to do
        when it cannot."""
        loras, source = self.manager.loras, given_source(source)
        name = loras.checked_name(name or None, default_name(source))
        loras.check_room(name)  # before any download
        access = HubAccess(self.manager.token, self.manager.local_files_only)
        file = fetch_lora(source, self.lora_sources, access, report)
        report(f"Loading {name} onto the FLUX.1 [dev] transformer", None)
        try:
            with self._lora_changes:  # room checked and taken in one step: two loads may race
                loras.check_room(name)
                if self.runner is not None:  # onto the workers; listed here, where requests are parsed
                    lora = self.runner.load_lora(file, name, source)
                    loras.record(lora)
                else:
                    lora = self.manager.load_lora(str(file), name)
        except FieldError:
            raise
        except (ValueError, OSError, RuntimeError, SafetensorError) as error:  # diffusers: not for this transformer
            log.warning("LoRA %s could not be loaded: %s", source, error)
            demo = "; the demo's tiny model takes only LoRAs made for it, such as those in its LoRA folder"
            raise FieldError("source", load_failure(error, file) + (demo if self.demo_reason else "")) from None
        lora.source = source
        return {"name": lora.name, **lora.status()}

    def unload_lora(self, name: str) -> None:
        with self._lora_changes:
            if self.runner is not None:
                self.manager.loras.forget(name)
                self.runner.unload_lora(name)
            else:
                self.manager.unload_lora(name)

    @property
    def max_waiting(self) -> int:
        return self.queue.max_waiting

    def enqueue(self, request: GenerationRequest, received_at: float, reserved: bool = False,
                force: bool = False) -> Ticket:
        """The request's place in the line (`AcceleratorQueue.join`); ServerBusy when full."""
        work = request_work(request.num_inference_steps, request.num_images, request.width, request.height)
        return self.queue.join(received_at, work, reserved=reserved, force=force)

    def execute(
        self,
        request: GenerationRequest,
        received_at: float | None = None,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
        ticket: Ticket | None = None,
        on_wait: WaitCallback | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> GenerationResult:
        """Run a validated request (seed already resolved) in its turn, check and store its
        images. Without a `ticket`, it joins the line now (ServerBusy when full). `on_wait`
        hears its place while it waits, `on_start` when its turn comes, `on_step` each step."""
        if received_at is None:
            received_at = ticket.arrival if ticket is not None else time.monotonic()
        ticket = ticket or self.enqueue(request, received_at)
        request_id = uuid.uuid4().hex[:12]
        try:
            self.queue.wait_turn(ticket, cancel, on_wait)
            if on_start is not None:
                on_start()
            run = self.runner.run if self.runner is not None else self.generate_here
            generated = run(request, request_id, on_step, cancel)
        finally:
            self.queue.release(ticket)
        request, images, flags, started = generated.request, generated.images, generated.flags, generated.started
        model = self.model_label(request)
        queued_ms, executed_ms = round((started - received_at) * 1000), round((generated.finished - started) * 1000)
        timings = {"queued_ms": queued_ms, "executed_ms": executed_ms}
        if generated.worker is not None:
            timings["worker"] = generated.worker
        info = {
            **request_info(request), "model": model, "request_id": request_id, "has_nsfw_concepts": flags,
            "warnings": generated.warnings, "timings": timings,
        }
        if request.inputs:  # kept, and swept, like results: a restore brings them back
            info["inputs"] = {name: self.store.save(encode_image(image, "png", 100), "png")
                              for name, image in request.inputs.items()}
        stored = [
            self._store(image, request, image_info(info, seed), flagged)
            for image, seed, flagged in zip(images, request.seeds(), flags, strict=True)
        ]
        control = getattr(request, "control_image", None)
        return GenerationResult(request=request, request_id=request_id, model=model, images=stored,
                                queued_ms=queued_ms, executed_ms=executed_ms, info=info,
                                control_image=self._store_map(control) if control is not None else None)

    def _prompt_warnings(self, request: GenerationRequest) -> list[str]:
        clip, t5 = self.manager.component("tokenizer"), self.manager.component("tokenizer_2")
        texts = {"prompt": request.prompt, "negative_prompt": getattr(request, "negative_prompt", "")}
        return [w for name, text in texts.items() for w in truncation_warnings(name, text, clip, t5)]

    def _step_guard(self, started: float, on_step: StepCallback | None, cancel: threading.Event | None):
        """The per-step callback: stops a cancelled or overlong request, then reports the step."""

        def step(image_index: int, step_done: int, steps: int, latents) -> None:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            if self.time_limit_seconds and time.monotonic() - started > self.time_limit_seconds:
                raise time_limit_error(self.time_limit_seconds)
            if on_step is not None:
                on_step(image_index, step_done, steps, latents)

        return step

    @on_accelerator
    def generate_here(self, request: GenerationRequest, request_id: str, on_step: StepCallback | None,
                      cancel: threading.Event | None) -> Generated:
        """Run a request on this process's manager (the local runner; a Ray worker's too)."""
        with self.manager.lock:
            started = time.monotonic()
            try:
                warnings = list(request.warnings) + self._prompt_warnings(request)
                request, images = self._run_mode(request, self._step_guard(started, on_step, cancel))
                flags = self._safety_flags(request, images)
            except GenerationError:
                raise
            except FieldError as error:  # what this server's models cannot do (--quantize), said plainly
                raise GenerationError(error.message, title="Not available on this server") from None
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.exception("request %s: out of accelerator memory", request_id)
                raise GenerationError(
                    "The accelerator ran out of memory. Try a smaller image size or fewer images.",
                    title="Out of memory",
                ) from None
            except Exception as error:
                log.exception("request %s failed", request_id)
                raise GenerationError(
                    f"Generation failed ({type(error).__name__}: {error}). Request id {request_id}."
                ) from None
            return Generated(request, images, flags, warnings, started, time.monotonic())

    def _run_mode(self, request: GenerationRequest, on_step: StepCallback) -> tuple[GenerationRequest, list]:
        """The request's mode on its route's pipelines, prepared first (a control map), with
        its step caching. Call with the accelerator lock held."""
        mode = MODES[request.mode]
        route = mode.route_for(self.fill)
        pipes = self.manager.enter(mode.name, route.pipelines, mode.control(request), request.loras)
        if mode.prepare is not None:
            needed = mode.prepare_components(request)
            request = mode.prepare(request, {name: self.manager.component(name) for name in needed})
        return request, generate(mode, pipes, request, on_step, self._step_cache(request, route.pipelines[-1]))

    def _step_cache(self, request: GenerationRequest, pipeline: str) -> StepCache:
        requested = None if request.step_cache == "auto" else request.step_cache
        report = self.manager.transformer_report(self.manager.transformer_of(pipeline))
        return StepCache(request_cache_kind(self.manager.acceleration, requested), report.get("float8", False))

    def _safety_flags(self, request: GenerationRequest, images: list[Image.Image]) -> list[bool]:
        if self.safety is None or not request.enable_safety_checker:
            return [False] * len(images)
        try:
            return self.safety.flags(images)
        except Exception as error:  # never hand out unchecked images when checking was asked for
            log.exception("the safety checker failed")
            raise GenerationError(
                f"The safety checker could not run ({type(error).__name__}: {error}); the images were "
                "not returned. Ask again with enable_safety_checker off to skip it.", title="Safety checker failed",
            ) from None

    def _store(self, image: Image.Image, request: GenerationRequest, info: dict[str, Any],
               flagged: bool) -> StoredImage:
        """Encode in the format asked for with the parameters embedded (`info` holds this
        image's own seed), store, and add it to the history index. A flagged image is
        replaced by black."""
        if flagged:
            image = blank_like(image)
        data = encode_with_parameters(image, request.output_format, request.output_quality, info)
        result_id = self.store.save(data, request.output_format)
        self.store.record(result_id, {"mode": request.mode, "model": info["model"], "prompt": request.prompt,
                                      "seed": info["seed"], "width": image.width, "height": image.height,
                                      "has_nsfw_concepts": flagged, "parameters": info})
        return StoredImage(
            result_id=result_id, file=self.store.folder / result_id, seed=info["seed"], width=image.width,
            height=image.height, content_type=MIME_TYPES[request.output_format], has_nsfw_concepts=flagged,
        )

    def _store_map(self, image: Image.Image) -> StoredImage:
        """A control map, stored beside the results (not in the history: it is an input)."""
        result_id = self.store.save(encode_image(image, "png", 100), "png")
        return StoredImage(result_id=result_id, file=self.store.folder / result_id, seed=-1, width=image.width,
                           height=image.height, content_type=MIME_TYPES["png"], has_nsfw_concepts=False)
