"""FLUX Playground on Ray Serve: `serve run deploy/serve.yaml`.

Two deployments. `FluxWorker` (one per GPU, `max_ongoing_requests=1`) holds its own pipeline
manager, built by the same start-up code as `python app.py`, and runs one validated request at
a time, streaming its steps. `FluxIngress` serves exactly `app.create_server(args)`'s FastAPI
app (REST APIs, Gradio page and API, MCP) with its `Playground` given a `RayRunner`: the line,
the job store and the result store stay here; only the generation goes to a worker.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from typing import Any

from ray import serve
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    RayTaskError,
)
from ray.serve.handle import DeploymentHandle

import app
from pipelines.errors import FieldError, GenerationCancelled, GenerationError
from pipelines.models.startup import limit_malloc_arenas
from pipelines.service import Generated, GenerationRequest, StepCallback

log = logging.getLogger("flux_playground")

# A worker that dies mid-request (killed, out of host memory, node lost): the request is sent
# again, to another worker or to the restarted one, this many times in all.
MAX_ATTEMPTS = 4
WORKER_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


def parsed_flags(flags: str | list[str]):
    """The app's own flags (`--demo --max-queue 32`), as `python app.py` parses them."""
    return app.parse_args(shlex.split(flags) if isinstance(flags, str) else list(flags))


@serve.deployment(name="FluxWorker", max_ongoing_requests=1)
class FluxWorker:
    """One accelerator's worker: its own manager and safety checker; no store, no line."""

    def __init__(self, flags: str | list[str] = ""):
        limit_malloc_arenas()
        self.playground = worker_playground(parsed_flags(flags))
        self.name = serve.get_replica_context().replica_id.unique_id
        self.served = 0

    def generate(self, request: GenerationRequest, request_id: str):
        """Run one request: yields ("step", image index, step, steps, latents) events, then
        ("done", Generated) with the images as PIL and this worker's name."""
        events: list[tuple] = []
        ready = threading.Condition()
        outcome: list = []

        def on_step(image_index: int, step: int, steps: int, latents) -> None:
            with ready:
                events.append(("step", image_index, step, steps, latents.detach().cpu()))
                ready.notify()

        def run() -> None:
            try:
                outcome.append(self.playground.generate_here(request, request_id, on_step, None))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
                outcome.append(error)
            with ready:
                ready.notify()

        threading.Thread(target=run, daemon=True).start()
        yield from self._stream(events, ready, outcome)

    def _stream(self, events: list, ready: threading.Condition, outcome: list):
        while True:
            with ready:
                while not events and not outcome:
                    ready.wait(0.5)
                pending, events[:] = list(events), []
            yield from pending
            if outcome and not events:
                break
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        self.served += 1
        generated: Generated = outcome[0]
        generated.worker = self.name
        yield ("done", generated)

    def status(self) -> dict[str, Any]:
        return {"worker": self.name, "device": str(self.playground.manager.placement.device),
                "requests_served": self.served}


def worker_playground(args):
    """A Playground used only for `generate_here`: the manager and safety checker of
    `create_server`, its results never stored (the ingress stores them)."""
    import tempfile
    from pathlib import Path

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


class RayRunner:
    """The Playground's runner on Ray Serve: each request goes to a free worker through the
    handle; a worker lost mid-request means the request runs again elsewhere."""

    def __init__(self, workers: DeploymentHandle, capacity: int):
        self.workers = workers
        self.capacity = capacity  # the line lets this many run at once: one per worker
        self.served: dict[str, int] = {}
        self.devices: dict[str, str] = {}
        self.retries = 0
        self.running = 0  # requests at a worker now
        self._lock = threading.Lock()

    def run(self, request: GenerationRequest, request_id: str, on_step: StepCallback | None,
            cancel: threading.Event | None) -> Generated:
        started = time.monotonic()
        with self._lock:
            self.running += 1
        try:
            generated = self._run_with_retries(request, request_id, on_step, cancel)
        finally:
            with self._lock:
                self.running -= 1
        with self._lock:
            self.served[generated.worker] = self.served.get(generated.worker, 0) + 1
        # The worker's clock is not ours: time the run as the ingress saw it.
        generated.started, generated.finished = started, time.monotonic()
        return generated

    def _run_with_retries(self, request, request_id, on_step, cancel) -> Generated:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self._run_once(request, request_id, on_step, cancel)
            except RayTaskError as error:  # the worker's own error, as the local runner raises it
                if isinstance(error.cause, (GenerationError, FieldError)):
                    raise error.cause from None
                raise
            except WORKER_LOST as error:
                if attempt == MAX_ATTEMPTS:
                    raise
                with self._lock:
                    self.retries += 1
                log.warning("request %s: worker lost (%s); sending it again (attempt %d)", request_id,
                            type(error).__name__, attempt + 1)
        raise AssertionError("unreachable")

    def _run_once(self, request, request_id, on_step, cancel) -> Generated:
        stream = self.workers.options(stream=True).generate.remote(request, request_id)
        for event in stream:
            if cancel is not None and cancel.is_set():
                stream.cancel()
                raise GenerationCancelled()
            if event[0] == "done":
                return event[1]
            if on_step is not None:
                on_step(*event[1:])
        raise RuntimeError("the worker's stream ended without a result")

    def status(self) -> dict[str, Any]:
        """The workers Serve runs now, and what each has served through this ingress."""
        with self._lock:
            served, retries, running = dict(self.served), self.retries, self.running
        return {"replicas": running_replicas("FluxWorker"), "requests_served": served, "running": running,
                "retries": retries}


def running_replicas(deployment: str) -> dict[str, int]:
    """Serve's count of the deployment's replicas by state (RUNNING, STARTING…)."""
    try:
        for application in serve.status().applications.values():
            if deployment in application.deployments:
                return dict(application.deployments[deployment].replica_states)
    except Exception as error:  # noqa: BLE001 - the controller busy or restarting: /status still answers
        log.warning("serve.status() failed: %s", error)
    return {}


@serve.deployment(name="FluxIngress")
@serve.ingress()
class FluxIngress:
    """The one app, as `python app.py` builds it, generating on the workers."""

    def __init__(self, workers: DeploymentHandle, flags: str | list[str] = "", capacity: int = 1):
        limit_malloc_arenas()
        self.args = parsed_flags(flags)
        self.runner = RayRunner(workers, capacity)

    def __serve_build_asgi_app__(self):
        server_app, self.playground = app.create_server(self.args, runner=self.runner)
        return server_app


def build_app(config: dict[str, Any]):
    """`serve run deploy/serve.yaml`'s builder. `config`: `flags` (the app's command-line flags,
    e.g. "--demo"), `workers` (how many requests the ingress sends at once: the workers'
    num_replicas, or autoscaling's max_replicas)."""
    flags, count = config.get("flags", ""), int(config.get("workers", 1))
    workers = FluxWorker.options(num_replicas=count).bind(flags)
    return FluxIngress.bind(workers, flags, count)
