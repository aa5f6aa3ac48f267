"""FLUX Playground on Ray Serve: `serve run deploy/serve.yaml`.

Two deployments. `FluxWorker` (one per GPU, `max_ongoing_requests=1`) holds its own pipeline
manager, built by the same start-up code as `python app.py`, and runs one validated request at
a time, streaming its steps. `FluxIngress` serves exactly `app.create_server(args)`'s FastAPI
app (REST APIs, Gradio page and API, MCP) with its `Playground` given a `RayRunner`: the line,
the job store, the result store and the list of users' LoRAs stay here; only the generation
goes to a worker.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

import app
from deploy.ray_runner import RayRunner
from deploy.worker_loras import ShippedLora, WorkerLoras
from deploy.worker_registry import registry, worker_card
from pipelines.errors import FieldError, GenerationError
from pipelines.models.startup import limit_malloc_arenas
from pipelines.service import Generated, GenerationRequest


def parsed_flags(flags: str | list[str]):
    """The app's own flags (`--demo --max-queue 32`), as `python app.py` parses them."""
    return app.parse_args(shlex.split(flags) if isinstance(flags, str) else list(flags))


def device_problem(device) -> str | None:
    """Why the worker's accelerator cannot run its models any more (a CUDA error poisons the
    process's context: every later call fails), or None. Serve restarts a worker that has one."""
    import torch

    if device.type != "cuda":
        return None
    try:
        torch.ones(1, device=device).add_(1).item()
        torch.cuda.synchronize(device)
    except RuntimeError as error:
        return f"{device} is not usable: {error}"
    return None


@serve.deployment(name="FluxWorker", max_ongoing_requests=1, health_check_period_s=5)
class FluxWorker:
    """One accelerator's worker: its own manager and safety checker; no store, no line."""

    def __init__(self, flags: str | list[str] = ""):
        limit_malloc_arenas()
        self.playground = worker_playground(parsed_flags(flags))
        context = serve.get_replica_context()
        self.name, self.actor_name = context.replica_id.unique_id, context.replica_id.to_full_id_str()
        self.registry = registry(context.app_name)
        self.loras = WorkerLoras(self.playground.manager, Path(tempfile.mkdtemp(prefix="flux-worker-loras-")))
        self.counts: dict[str, Any] = {"requests_served": 0, "cancelled": 0, "running": None,
                                       "started_at": time.time()}
        self._one_at_a_time = threading.Lock()  # a cancelled run still finishing its step holds it
        self._report()

    async def generate(self, request: GenerationRequest, request_id: str, loras: dict[str, ShippedLora]):
        """Run one request: yields ("step", image index, step, steps, latents) events, then
        ("done", Generated) with the images as PIL and this worker's name. `loras`: the
        ingress's list. Closed early (the caller cancelled or went away), it stops the run at
        its next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(event: tuple) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def on_step(image_index: int, step: int, steps: int, latents) -> None:
            put(("step", image_index, step, steps, latents.detach().cpu()))

        def run() -> None:
            try:
                put(("done", self._run(request, request_id, loras, on_step, cancel)))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
                put(("error", error))

        threading.Thread(target=run, daemon=True, name=f"generate-{request_id}").start()
        finished = False
        try:
            while not finished:
                event = await events.get()
                if event[0] == "error":
                    raise event[1]
                finished = event[0] == "done"
                yield event
        finally:
            if not finished:
                cancel.set()

    def _run(self, request, request_id, loras, on_step, cancel) -> Generated:
        with self._one_at_a_time:
            self.counts["running"] = request_id
            self._report()
            try:
                self._take_up_loras(loras, request.loras)
                generated = self.playground.generate_here(request, request_id, on_step, cancel)
            finally:
                self.counts["running"] = None
                self.counts["cancelled" if cancel.is_set() else "requests_served"] += 1
                self._report()
        generated.worker = self.name
        return generated

    def _take_up_loras(self, listed: dict[str, ShippedLora], named: tuple[tuple[str, float], ...]) -> None:
        try:
            self.loras.take_up(listed, named)
        except (FieldError, ValueError, OSError, RuntimeError) as error:
            raise GenerationError(f"This worker could not load the request's LoRAs ({error}).",
                                  title="LoRA not available") from None

    async def load_lora(self, shipped: ShippedLora) -> dict[str, Any]:
        """Load a LoRA the ingress is adding to its list; its status, or the loader's error."""
        return await asyncio.to_thread(self._load_lora, shipped)

    def _load_lora(self, shipped: ShippedLora) -> dict[str, Any]:
        with self._one_at_a_time:
            status = self.loras.load(shipped)
        self._report()
        return status

    def check_health(self) -> None:
        """Serve's health check: tells the registry this worker is here; fails when its
        accelerator cannot run the models any more."""
        self._report()
        problem = device_problem(self.playground.manager.placement.device)
        if problem:
            raise RuntimeError(problem)

    def _report(self) -> None:
        self.registry.report.remote(worker_card(self.name, self.actor_name, self.playground.manager.status(),
                                                dict(self.counts)))

    def __del__(self):  # Serve stopping the replica on purpose (scaling down, redeploying)
        registry_actor = getattr(self, "registry", None)
        if registry_actor is not None:
            registry_actor.stopped.remote(self.name)


def worker_playground(args):
    """A Playground used only for `generate_here`: the manager and safety checker of
    `create_server`, its results never stored (the ingress stores them)."""
    from pipelines.models.startup import start_manager
    from pipelines.outputs.results import ResultStore
    from pipelines.outputs.safety import SafetyChecker
    from pipelines.service import Playground

    manager, demo_reason, plan = start_manager(args)
    safety = SafetyChecker(manager.sources.safety, manager.placement.device, args.safety_threshold,
                           local_files_only=manager.local_files_only)
    unused_store = ResultStore(Path(tempfile.mkdtemp(prefix="flux-worker-")), retention_seconds=3600)
    return Playground(manager, unused_store, demo_reason, safety, time_limit_seconds=args.time_limit,
                      memory_plan=plan)


# Every open page and gradio_client holds a heartbeat stream and an event stream here, and
# each counts as an ongoing request: Serve's default of 5 would stall the sixth.
@serve.deployment(name="FluxIngress", max_ongoing_requests=1000)
@serve.ingress()
class FluxIngress:
    """The one app, as `python app.py` builds it, generating on the workers."""

    def __init__(self, workers: DeploymentHandle, flags: str | list[str] = "", capacity: int = 1):
        limit_malloc_arenas()
        self.args = parsed_flags(flags)
        self.runner = RayRunner(workers, capacity, serve.get_replica_context().app_name)

    def __serve_build_asgi_app__(self):
        server_app, self.playground = app.create_server(self.args, runner=self.runner)
        return server_app


def worker_scaling(config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """FluxWorker's replica options from the config, and how many requests the ingress may send
    at once: `workers` (a fixed number), or `autoscaling` (Serve's autoscaling_config; up to its
    max_replicas run at once, the rest wait at Serve's router, which is what scales it up)."""
    scaling = config.get("autoscaling")
    if scaling:
        if int(scaling.get("max_replicas", 0)) < 1:
            raise ValueError("autoscaling needs max_replicas (1 or more): the most workers to start")
        return {"autoscaling_config": {"target_ongoing_requests": 1, **scaling}}, int(scaling["max_replicas"])
    count = int(config.get("workers", 1))
    if count < 1:
        raise ValueError(f"workers must be 1 or more, not {count}")
    return {"num_replicas": count}, count


def build_app(config: dict[str, Any]):
    """`serve run deploy/serve.yaml`'s builder. `config`: `flags` (the app's command-line flags,
    e.g. "--demo"), and `workers` or `autoscaling` (see `worker_scaling`)."""
    flags = config.get("flags", "")
    options, capacity = worker_scaling(config)
    return FluxIngress.bind(FluxWorker.options(**options).bind(flags), flags, capacity)
