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
import logging
import threading
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

import app
from deploy.parallel_ranks import RankGroup
from deploy.ray_runner import RayRunner
from deploy.worker_loras import ShippedLora, WorkerLoras
from deploy.worker_playground import parsed_flags, scratch_folder, worker_playground
from deploy.worker_registry import registry, worker_card
from pipelines.errors import FieldError, GenerationCancelled, GenerationError
from pipelines.models.startup import limit_malloc_arenas
from pipelines.service import Generated, GenerationRequest

log = logging.getLogger("flux_playground")


SPLITS = (1, 2, 4, 8)  # context_parallel: GPUs per worker


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

    def __init__(self, flags: str | list[str] = "", context_parallel: int = 1):
        limit_malloc_arenas()
        # Several GPUs for one worker: rank processes that split each image with this one.
        self.ranks = RankGroup(flags, context_parallel) if context_parallel > 1 else None
        args = parsed_flags(flags)
        self.time_limit = args.time_limit
        if self.ranks is None:
            self.playground = worker_playground(args)
        else:  # the ranks agree on a stop at each step (AgreedStop), the time limit included
            self.playground = worker_playground(args, self.ranks.config, time_limit_seconds=0)
        context = serve.get_replica_context()
        self.name, self.actor_name = context.replica_id.unique_id, context.replica_id.to_full_id_str()
        self.registry = registry(context.app_name)
        self.loras = WorkerLoras(self.playground.manager, scratch_folder("flux-worker-loras-"))
        self.counts: dict[str, Any] = {"requests_served": 0, "cancelled": 0, "failed": 0, "running": None,
                                       "started_at": time.time(), "ranks": context_parallel}
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
            if cancel.is_set():  # cancelled while a cancelled run before it was still stopping
                raise GenerationCancelled()
            self.counts["running"] = request_id
            self._report()
            outcome = "failed"
            try:
                generated = self._run_here(request, request_id, loras, on_step, cancel)
                outcome = "requests_served"
            except GenerationCancelled:
                outcome = "cancelled"
                raise
            except FieldError as error:  # only the LoRA take-up raises these here
                raise GenerationError(f"This worker could not load the request's LoRAs: {error.message}.",
                                      title="LoRA not available") from None
            finally:
                self.counts["running"] = None
                self.counts[outcome] += 1
                self._report()
        generated.worker = self.name
        return generated

    def _run_here(self, request, request_id, loras, on_step, cancel) -> Generated:
        if self.ranks is not None:
            return self.ranks.run(self.playground, self.loras, request, request_id, loras, on_step, cancel,
                                  self.time_limit)
        self.loras.take_up(loras, request.loras)
        return self.playground.generate_here(request, request_id, on_step, cancel)

    async def load_lora(self, shipped: ShippedLora, listed: dict[str, ShippedLora]) -> dict[str, Any]:
        """Load a LoRA the ingress is adding to its list (`listed`, without it); its status,
        or the loader's error."""
        return await asyncio.to_thread(self._load_lora, shipped, listed)

    def _load_lora(self, shipped: ShippedLora, listed: dict[str, ShippedLora]) -> dict[str, Any]:
        with self._one_at_a_time:
            if self.ranks is not None:
                status = self.ranks.load_lora(self.loras, shipped, listed)
            else:
                self.loras.take_up(listed, ())  # first what the ingress unloaded: room for this one
                status = self.loras.load(shipped)
        self._report()
        return status

    def check_health(self) -> None:
        """Serve's health check: tells the registry this worker is here; fails when its
        accelerator cannot run the models any more."""
        self._report()
        problem = device_problem(self.playground.manager.placement.device)
        problem = problem or (self.ranks.problem() if self.ranks is not None else None)
        if problem:
            raise RuntimeError(problem)

    def _report(self) -> None:
        try:
            self.registry.report.remote(worker_card(self.name, self.actor_name, self.playground.manager.status(),
                                                    dict(self.counts)))
        except Exception as error:  # noqa: BLE001 - a card missed is no reason to fail a request
            log.warning("worker %s: could not report to the registry: %s", self.name, error)

    def __del__(self):  # Serve stopping the replica on purpose (scaling down, redeploying)
        registry_actor = getattr(self, "registry", None)
        if registry_actor is not None:
            registry_actor.stopped.remote(self.name)
        if getattr(self, "ranks", None) is not None:
            self.ranks.close()


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
    e.g. "--demo"), `workers` or `autoscaling` (see `worker_scaling`), and `context_parallel`
    (GPUs per worker, each image split over them; give FluxWorker as many num_gpus)."""
    flags, degree = config.get("flags", ""), int(config.get("context_parallel", 1))
    if degree not in SPLITS:  # FLUX's 24 heads and 512 text tokens split evenly only so
        raise ValueError(f"context_parallel must be one of {', '.join(map(str, SPLITS))}, not {degree}")
    options, capacity = worker_scaling(config)
    return FluxIngress.bind(FluxWorker.options(**options).bind(flags, degree), flags, capacity)
