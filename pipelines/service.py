"""The playground's core service: a validated request in, stored images and their info out.

The Gradio endpoints (`pipelines/gradio_endpoints.py`) and the REST routes (`rest/`) are thin
adapters over `Playground.execute`, so every way in runs the same code, holds the same
accelerator lock and stores results in the same place.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipelines.images import MIME_TYPES, encode_image
from pipelines.manager import PipelineManager
from pipelines.modes import StepCallback, generate
from pipelines.requests import GenerationRequest
from pipelines.results import ResultStore
from pipelines.safety import SafetyChecker, blank_like

log = logging.getLogger("flux_playground")

try:  # On a ZeroGPU Space, `spaces.GPU` attaches a GPU for the call; elsewhere a no-op.
    import spaces

    on_accelerator = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the deployment

    def on_accelerator(fn: Callable) -> Callable:
        return fn


class GenerationError(RuntimeError):
    """A request that validated but could not be served; the message is for the user."""

    def __init__(self, message: str, title: str = "Generation failed"):
        super().__init__(message)
        self.title = title


class GenerationCancelled(GenerationError):
    def __init__(self):
        super().__init__("The request was cancelled.", title="Cancelled")


class ArrivalStamp:
    """ASGI middleware noting when each HTTP request arrived, so a result can report how
    long it waited before the accelerator took it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["received_at"] = time.monotonic()
        await self.app(scope, receive, send)


def arrival_time(scope: dict | None) -> float:
    """When the request with this ASGI scope arrived (now, if it was not stamped)."""
    try:
        return scope["state"]["received_at"]
    except (KeyError, TypeError):
        return time.monotonic()


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

    @property
    def has_nsfw_concepts(self) -> list[bool]:
        return [image.has_nsfw_concepts for image in self.images]


def request_info(request: GenerationRequest) -> dict[str, Any]:
    """The parameters a result was made with, as shown next to it and returned by the APIs."""
    info: dict[str, Any] = {"mode": request.mode}
    for item in fields(request):
        value = getattr(request, item.name)
        if item.name == "image":
            info["input_image_size"] = list(value.size)
        else:
            info[item.name] = value
    info["seeds"] = request.seeds()
    return info


class Playground:
    """The service: one pipeline manager, one result store, optionally a safety checker."""

    def __init__(self, manager: PipelineManager, store: ResultStore, demo_reason: str | None = None,
                 safety: SafetyChecker | None = None):
        self.manager = manager
        self.store = store
        self.demo_reason = demo_reason
        self.safety = safety

    @property
    def outputs_dir(self) -> Path:
        return self.store.folder

    def status(self) -> dict[str, Any]:
        """The pipeline manager's state, the safety checker's and why the demo runs, if it does."""
        state = self.manager.status()
        state["demo_reason"] = self.demo_reason
        if self.safety is not None:
            state["safety_checker"] = self.safety.status()
        return state

    def execute(
        self,
        request: GenerationRequest,
        received_at: float | None = None,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run a validated request (seed already resolved), check and store its images."""
        received_at = time.monotonic() if received_at is None else received_at
        request_id = uuid.uuid4().hex[:12]

        def step(image_index: int, step_done: int, steps: int, latents) -> None:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            if on_step is not None:
                on_step(image_index, step_done, steps, latents)

        images, flags, started, finished = self._generate(request, request_id, step)
        stored = [
            self._store(image, request, seed, flagged)
            for image, seed, flagged in zip(images, request.seeds(), flags, strict=True)
        ]
        result = GenerationResult(
            request=request, request_id=request_id, model=self.manager.sources.label_for(request.mode),
            images=stored, queued_ms=round((started - received_at) * 1000),
            executed_ms=round((finished - started) * 1000),
        )
        result.info = {
            **request_info(request), "model": result.model, "request_id": request_id,
            "has_nsfw_concepts": result.has_nsfw_concepts,
            "timings": {"queued_ms": result.queued_ms, "executed_ms": result.executed_ms},
        }
        return result

    @on_accelerator
    def _generate(self, request: GenerationRequest, request_id: str, on_step):
        with self.manager.lock:
            started = time.monotonic()
            try:
                images = generate(self.manager, request, on_step)
                flags = self._safety_flags(request, images)
            except GenerationError:
                raise
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
            return images, flags, started, time.monotonic()

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

    def _store(self, image: Image.Image, request: GenerationRequest, seed: int, flagged: bool) -> StoredImage:
        """Encode in the format asked for and store; a flagged image is replaced by black."""
        if flagged:
            image = blank_like(image)
        data = encode_image(image, request.output_format, request.output_quality)
        result_id = self.store.save(data, request.output_format)
        return StoredImage(
            result_id=result_id, file=self.store.folder / result_id, seed=seed, width=image.width,
            height=image.height, content_type=MIME_TYPES[request.output_format], has_nsfw_concepts=flagged,
        )
