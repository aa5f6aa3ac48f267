"""The playground's endpoints: raw UI/API values in, validated requests run, files and info out.

Each public method is one named endpoint of Gradio's automatic API; its parameter names are
the API's parameter names (snake_case, as the hosted FLUX APIs use them).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from pipelines.images import encode_image
from pipelines.manager import PipelineManager
from pipelines.modes import generate
from pipelines.requests import GenerationRequest, RequestError, parse_request, with_seed

log = logging.getLogger("flux_playground")

try:  # On a ZeroGPU Space, `spaces.GPU` attaches a GPU for the call; elsewhere a no-op.
    import spaces

    on_accelerator = spaces.GPU(duration=120)
except ImportError:  # pragma: no cover - depends on the deployment

    def on_accelerator(fn: Callable) -> Callable:
        return fn


class ArrivalStamp:
    """ASGI middleware noting when each HTTP request arrived, so a result can report how
    long it waited in the queue before the accelerator took it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["received_at"] = time.monotonic()
        await self.app(scope, receive, send)


def _arrival_time(request: gr.Request | None) -> float:
    try:
        return request.request.scope["state"]["received_at"]
    except (AttributeError, KeyError, TypeError):
        return time.monotonic()


# Parameters every generating endpoint takes after its own, in this order.
SHARED_PARAMETERS = (
    "image_size", "width", "height", "num_inference_steps", "guidance_scale", "seed",
    "num_images", "output_format", "output_quality",
)


@dataclass(frozen=True)
class Endpoint:
    """One named API endpoint: its parameters (snake_case, as the hosted FLUX APIs name them),
    which of them a caller must give, and its description on the API page."""

    mode: str
    own_parameters: tuple[str, ...]
    required: tuple[str, ...]
    description: str

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.own_parameters + SHARED_PARAMETERS

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
        Endpoint("kontext_edit", ("image", "prompt"), ("image", "prompt"),
                 "Edit an image by instruction with FLUX.1 Kontext [dev]. By default the output has the "
                 "Kontext training resolution (about one megapixel) nearest the input's aspect."),
        Endpoint("redux_variation", ("image", "prompt", "prompt_embeds_scale", "pooled_prompt_embeds_scale"),
                 ("image",),
                 "Make variations of an image with FLUX.1 Redux [dev] on FLUX.1 [dev]; an optional prompt "
                 "steers them. By default the output keeps the input's aspect at about one megapixel."),
    )
}


def make_validator(mode: str, names: list[str]) -> Callable:
    """A gradio `validator=` for a mode's endpoint: it runs when the request is queued, before
    any accelerator time, and marks each invalid field with a message naming its range."""

    def validate(*values):
        try:
            parse_request(mode, dict(zip(names, values)))
            problems: dict[str, str] = {}
        except RequestError as error:
            problems = {}
            for problem in error.errors:
                problems[problem.field] = "; ".join(filter(None, [problems.get(problem.field), problem.message]))
        return [gr.validate(name not in problems, problems.get(name, "")) for name in names]

    validate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    return validate


def request_info(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The parameters a result was made with, as shown next to it and returned by the API."""
    info: dict[str, Any] = {"mode": request.mode, "model": model}
    for field in fields(request):
        value = getattr(request, field.name)
        if field.name == "image":
            info["input_image_size"] = list(value.size)
        else:
            info[field.name] = value
    info["seeds"] = request.seeds()
    return info


class Playground:
    """The endpoints, bound to one pipeline manager and one outputs folder."""

    def __init__(self, manager: PipelineManager, outputs_dir: Path, demo_reason: str | None = None):
        self.manager = manager
        self.outputs_dir = Path(outputs_dir)
        self.demo_reason = demo_reason

    # --- endpoints -------------------------------------------------------------------------

    def endpoint(self, mode: str) -> Callable:
        """The named API endpoint for `mode`: a function whose signature is the API's parameters.

        Parameters left out (None) take their defaults from presets/; gradio_client fills in
        the components' initial values, which come from presets/ too.
        """
        spec = ENDPOINTS[mode]
        signature = spec.signature()

        def run(*args, **kwargs):
            values = signature.bind(*args, **kwargs).arguments
            raw = {name: values.get(name) for name in spec.parameters}
            return self._run(mode, raw, values.get("request"), values.get("progress") or gr.Progress())

        run.__name__ = run.__qualname__ = mode
        run.__doc__ = spec.description
        run.__signature__ = signature
        run.__annotations__ = {"request": gr.Request}
        return run

    def status(self) -> dict[str, Any]:
        """The pipeline manager's state: components loaded (from where, device, dtype, bytes, load counts), pipelines and mode switches."""
        state = self.manager.status()
        state["demo_reason"] = self.demo_reason
        return state

    # --- the shared path ---------------------------------------------------------------------

    def _run(self, mode: str, raw: dict[str, Any], request: gr.Request | None, progress) -> tuple:
        received = _arrival_time(request)
        try:
            parsed = with_seed(parse_request(mode, raw))
        except RequestError as error:
            raise gr.Error(str(error), title="Invalid request") from None
        request_id = uuid.uuid4().hex[:12]
        images, started, finished = self._generate(parsed, request_id, progress)
        model = self.manager.sources.label_for(mode)
        info = request_info(parsed, model)
        info["request_id"] = request_id
        info["timings"] = {
            "queued_ms": round((started - received) * 1000),
            "executed_ms": round((finished - started) * 1000),
        }
        files = self._save(images, parsed, request_id)
        gallery = [(str(path), f"{model} · seed {seed}") for path, seed in zip(files, parsed.seeds())]
        return gallery, parsed.seed, info

    @on_accelerator
    def _generate(self, parsed: GenerationRequest, request_id: str, progress):
        total = parsed.num_images

        def on_step(image_index: int, step: int, steps: int) -> None:
            progress((image_index * steps + step, total * steps), desc="Denoising", unit="steps")

        with self.manager.lock:
            started = time.monotonic()
            missing = self.manager.missing_components(parsed.mode)
            if missing:  # a mode's first request loads its weights: say so rather than sit still
                progress(0, desc=f"Loading {', '.join(missing)}")
            try:
                images = generate(self.manager, parsed, on_step)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.exception("request %s: out of accelerator memory", request_id)
                raise gr.Error(
                    "The accelerator ran out of memory. Try a smaller image size or fewer images.",
                    title="Out of memory",
                ) from None
            except Exception as error:
                log.exception("request %s failed", request_id)
                raise gr.Error(f"Generation failed ({type(error).__name__}: {error}). "
                               f"Request id {request_id}.", title="Generation failed") from None
            return images, started, time.monotonic()

    def _save(self, images, parsed: GenerationRequest, request_id: str) -> list[Path]:
        """Write each image in the format asked for; the file is what the page and API serve."""
        folder = self.outputs_dir / datetime.now().strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for image, seed in zip(images, parsed.seeds()):
            path = folder / f"{request_id}-{parsed.mode}-{seed}.{parsed.output_format}"
            path.write_bytes(encode_image(image, parsed.output_format, parsed.output_quality))
            paths.append(path)
        return paths
