"""The Playground's runner on Ray Serve: each request goes to a free worker through the
deployment handle, its steps streamed back; a worker lost mid-request means the request runs
again on another. Users' LoRAs are listed here and shipped with the requests that name them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from deploy.worker_loras import ShippedLora, ship_lora, user_lora
from deploy.worker_registry import read_registry, running_replicas
from pipelines.errors import FieldError, GenerationCancelled, GenerationError
from pipelines.loras.adapters import UserLora
from pipelines.service import Generated, GenerationRequest, StepCallback

log = logging.getLogger("flux_playground")

# A worker that dies mid-request (killed, out of host memory, node lost): the request is sent
# again, to another worker or to the restarted one, this many times in all.
MAX_ATTEMPTS = 4
WORKER_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


def worker_error(error: RayTaskError) -> Exception:
    """A worker's exception as the local runner raises it: the request's own errors as they
    are, anything else as a GenerationError naming it."""
    cause = error.cause
    if isinstance(cause, (GenerationError, FieldError)):
        return cause
    return GenerationError(f"The worker failed ({type(cause).__name__}: {cause}).")


def stop_when_cancelled(stream, cancel: threading.Event, finished: threading.Event) -> None:
    """Cancel the worker's stream as soon as `cancel` is set (Serve raises CancelledError in
    the worker's generator, which stops its run at the next step), not at the next event."""
    while not finished.is_set():
        if cancel.wait(0.1):
            stream.cancel()
            return


class RayRunner:
    def __init__(self, workers: DeploymentHandle, capacity: int, application: str):
        self.workers = workers
        self.capacity = capacity  # the line lets this many run at once: one per worker
        self.application = application  # the Serve application: its workers' registry
        self.loras: dict[str, ShippedLora] = {}  # what requests may name, by name
        self.served: dict[str, int] = {}
        self.retries = 0
        self.running = 0  # requests at a worker now
        self._lock = threading.Lock()

    def run(self, request: GenerationRequest, request_id: str, on_step: StepCallback | None,
            cancel: threading.Event | None) -> Generated:
        started = time.monotonic()
        with self._lock:
            self.running += 1
        try:
            generated = self._with_retries(request_id, lambda: self._run_once(request, request_id, on_step, cancel))
        finally:
            with self._lock:
                self.running -= 1
        with self._lock:
            self.served[generated.worker] = self.served.get(generated.worker, 0) + 1
        # The worker's clock is not ours: time the run as the ingress saw it.
        generated.started, generated.finished = started, time.monotonic()
        return generated

    def load_lora(self, file: Path, name: str, source: str) -> UserLora:
        """Load the LoRA onto one worker, which checks that it fits the transformer; the others
        take it up before their first request naming it."""
        shipped = ship_lora(file, name, source)
        # The loader's own errors, as the service maps them for the local manager's.
        listed = {other: lora for other, lora in self.loras.items() if other != name}
        status = self._with_retries(f"load_lora {name}",
                                    lambda: self.workers.load_lora.remote(shipped, listed).result(),
                                    errors=lambda error: error.cause)
        self.loras[name] = shipped
        return user_lora(shipped, file, status)

    def unload_lora(self, name: str) -> None:
        """Off the list: each worker unloads it before its next request."""
        self.loras.pop(name, None)

    def _with_retries(self, what: str, call, errors=worker_error):
        """`call()`, again while its worker is lost; a worker's error raised as `errors` maps it."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return call()
            except RayTaskError as error:
                raise errors(error) from None
            except WORKER_LOST as error:
                if attempt == MAX_ATTEMPTS:
                    raise GenerationError(f"{MAX_ATTEMPTS} workers were lost running the request; "
                                          "the cluster may be short of memory.", title="Workers lost") from None
                with self._lock:
                    self.retries += 1
                log.warning("%s: worker lost (%s); sending it again (attempt %d)", what, type(error).__name__,
                            attempt + 1)
        raise AssertionError("unreachable")

    def _run_once(self, request, request_id, on_step, cancel) -> Generated:
        stream = self.workers.options(stream=True).generate.remote(request, request_id, dict(self.loras))
        finished = threading.Event()
        if cancel is not None:
            threading.Thread(target=stop_when_cancelled, args=(stream, cancel, finished), daemon=True).start()
        try:
            for event in stream:
                if event[0] == "done":
                    return event[1]
                if on_step is not None:
                    on_step(*event[1:])
        except Exception:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled() from None
            raise
        finally:
            finished.set()
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled()
        raise RuntimeError("the worker's stream ended without a result")

    def status(self) -> dict[str, Any]:
        """The workers Serve runs, what each is and holds, and what each served through this
        ingress; the requests retried after a worker was lost."""
        with self._lock:
            served, retries, running = dict(self.served), self.retries, self.running
        return {"replicas": running_replicas(self.application), **read_registry(self.application),
                "requests_served": served, "running": running, "retries": retries}
