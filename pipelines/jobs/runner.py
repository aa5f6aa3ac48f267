"""Asynchronous jobs for every async API: taken, recorded, queued, run, and found again after
a restart.

`JobRunner.submit` takes a validated request: it gets a ticket in the accelerator's one line
(busy is refused here, before anything is written), records the job with its raw fields in
the `JobStore`, and runs it in its turn through `Playground.execute`. While a job runs its
steps (and, where the API streams, previews) are kept in memory, in its `LiveJob`; its
outcome is written to the store.

On start, `recover` queues again, in their order, the jobs that were queued or running when
the server stopped (a running one starts over): each is parsed again from its recorded
fields, so it runs exactly as it would have (its seed was recorded resolved).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.errors import FieldError, GenerationCancelled, GenerationError
from pipelines.imaging.images import encode_image
from pipelines.imaging.previews import preview_image, should_preview
from pipelines.jobs.store import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, JobRecord, JobStore
from pipelines.modes.request_types import GenerationRequest
from pipelines.service import GenerationResult, Playground
from presets import PRESETS

log = logging.getLogger("flux_playground")

IMAGE_KEY = "$image"  # a recorded field holding an input image: {"$image": stored id}
PREVIEW_QUALITY = 80
RECENT_JOBS_KEPT = 64


@dataclass(frozen=True)
class StepEvent:
    """One denoising step of a running job; `preview`: a JPEG of the latents, where asked for."""

    image_index: int
    step: int
    steps: int
    at: float  # unix time
    preview: bytes | None = None
    preview_size: tuple[int, int] | None = None


@dataclass
class LiveJob:
    """What a queued or running job has in memory: its cancel flag and its steps so far. Readers
    poll `steps` (only ever appended to) and `done`."""

    cancel: threading.Event = field(default_factory=threading.Event)
    steps: list[StepEvent] = field(default_factory=list)
    place: tuple[int, float | None] | None = None  # (ahead, estimated seconds) while waiting
    done: threading.Event = field(default_factory=threading.Event)


def result_summary(result: GenerationResult) -> dict[str, Any]:
    """What every API's answer is made from, kept with the job (JSON)."""
    return {
        "images": [{"result_id": image.result_id, "width": image.width, "height": image.height,
                    "content_type": image.content_type, "seed": image.seed,
                    "has_nsfw_concepts": image.has_nsfw_concepts} for image in result.images],
        "seed": result.request.seed, "prompt": result.request.prompt, "model": result.model,
        "request_id": result.request_id, "warnings": list(result.info["warnings"]),
        "queued_ms": result.queued_ms, "executed_ms": result.executed_ms,
    }


class JobRunner:
    def __init__(self, playground: Playground, store: JobStore):
        self.playground = playground
        self.store = store
        self._live: dict[str, LiveJob] = {}
        # Jobs that just finished keep their steps a while, for streams still reading them.
        self._recent: OrderedDict[str, LiveJob] = OrderedDict()
        self._lock = threading.RLock()  # status changes: a cancel, a start and an end never cross

    # -- taking jobs -------------------------------------------------------------------------

    def submit(self, api: str, route: str, raw: Mapping[str, Any], request: GenerationRequest,
               options: Mapping[str, Any] | None = None, received_at: float | None = None,
               id_prefix: str = "") -> JobRecord:
        """Queue a validated `request` (parsed from `raw`); the job is on disk when this returns.
        Raises ServerBusy when the line is full."""
        ticket = self.playground.enqueue(request, time.monotonic() if received_at is None else received_at)
        try:
            record = JobRecord(id=f"{id_prefix}{uuid.uuid4()}", api=api, route=route, mode=request.mode,
                               request=self._recordable(raw, request), options=dict(options or {}))
            self.store.add(record)
        except BaseException:
            self.playground.queue.release(ticket)
            raise
        self._start(record, request, ticket)
        return record

    def recover(self) -> int:
        """Queue again the jobs a stopped server left queued or running, in their order."""
        jobs = self.store.unfinished()
        for record in jobs:
            record = self.store.update(record.id, status=QUEUED, started_at=None)
            try:
                request = self.playground.parse(record.mode, self._raw(record.request))
            except (FieldError, OSError) as error:  # a LoRA it named is gone, an input was swept
                self.store.update(record.id, status=FAILED, finished_at=time.time(),
                                  error=f"The job could not be run again after a restart: {error}")
                continue
            ticket = self.playground.enqueue(request, time.monotonic(), force=True)
            self._start(record, request, ticket)
        if jobs:
            log.info("Queued again %d job(s) left unfinished by the last run", len(jobs))
        return len(jobs)

    # -- reading and acting on jobs ----------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def live(self, job_id: str) -> LiveJob | None:
        """The in-memory side of a job that is queued, running or just finished (None after
        a restart, or a while after it finished)."""
        with self._lock:
            return self._live.get(job_id) or self._recent.get(job_id)

    def position(self, job_id: str) -> int | None:
        live = self.live(job_id)
        return live.place[0] if live is not None and live.place is not None else None

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """The job once it finished, or as it is after `timeout` seconds."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            live.done.wait(timeout)
        return self.get(job_id)

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once, a running one at its next denoising step."""
        with self._lock:
            record, live = self.store.get(job_id), self._live.get(job_id)
            if record is None or record.finished or live is None:
                return record
            live.cancel.set()
            if record.status == QUEUED:
                return self._finish(job_id, CANCELLED)
            return record

    def purge(self, api: str, route: str | None = None) -> int:
        """Cancel every job of `api` (and `route`) still waiting; how many were."""
        return sum(self.cancel(record.id) is not None for record in self.store.queued(api, route))

    def start_sweeper(self, retention_seconds: float, interval_seconds: float = 3600) -> threading.Thread:
        """Forget finished jobs older than `retention_seconds` (their results' retention), now
        and every `interval_seconds`, in a daemon thread."""

        def loop():
            while True:
                removed = self.store.sweep(time.time() - retention_seconds)
                if removed:
                    log.info("forgot %d finished jobs older than %.0f s", len(removed), retention_seconds)
                time.sleep(interval_seconds)

        thread = threading.Thread(target=loop, name="job-sweeper", daemon=True)
        thread.start()
        return thread

    # -- running -----------------------------------------------------------------------------

    def _start(self, record: JobRecord, request: GenerationRequest, ticket) -> None:
        # Its place is known now, before its thread first reports it: an API may answer with it at once.
        ahead = self.playground.queue.position(ticket)
        live = LiveJob(place=(ahead, None) if ahead is not None else None)
        with self._lock:
            self._live[record.id] = live
        threading.Thread(target=self._run, args=(record, request, ticket, live), daemon=True,
                         name=f"job-{record.id[:8]}").start()

    def _run(self, record: JobRecord, request: GenerationRequest, ticket, live: LiveJob) -> None:
        previews = bool(record.options.get("previews")) and request.live_preview

        def on_wait(ahead: int, seconds: float | None) -> None:
            live.place = (ahead, seconds)

        def on_start() -> None:
            with self._lock:
                if live.cancel.is_set():  # cancelled as its turn came: already written so
                    raise GenerationCancelled()
                live.place = None
                self.store.update(record.id, status=RUNNING, started_at=time.time(), attempts=record.attempts + 1)

        def on_step(image_index: int, step: int, steps: int, latents) -> None:
            preview = size = None
            if previews and should_preview(step - 1, steps, PRESETS.preview_every_steps):
                image = preview_image(latents, request.height, request.width, PRESETS.preview_max_side)
                preview, size = encode_image(image, "jpeg", PREVIEW_QUALITY), image.size
            live.steps.append(StepEvent(image_index, step, steps, time.time(), preview, size))

        try:
            result = self.playground.execute(request, None, on_step, live.cancel, ticket=ticket, on_wait=on_wait,
                                             on_start=on_start)
            self._finish(record.id, COMPLETED, result=result_summary(result))
        except GenerationCancelled:
            self._finish(record.id, CANCELLED)
        except GenerationError as error:
            self._finish(record.id, FAILED, error=str(error))
        except Exception as error:  # the job's thread must record whatever happened
            log.exception("job %s failed", record.id)
            self._finish(record.id, FAILED, error=f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self._recent[record.id] = self._live.pop(record.id, live)
                while len(self._recent) > RECENT_JOBS_KEPT:
                    self._recent.popitem(last=False)
            live.done.set()

    def _finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> JobRecord:
        with self._lock:
            current = self.store.get(job_id)
            if current is not None and current.finished:  # cancelled while queued: already written
                return current
            return self.store.update(job_id, status=status, finished_at=time.time(), result=result, error=error)

    # -- recording the request ---------------------------------------------------------------

    def _recordable(self, raw: Mapping[str, Any], request: GenerationRequest) -> dict[str, Any]:
        """`raw` as JSON: input images stored beside the results, the seed as resolved."""
        recorded: dict[str, Any] = {}
        for name, value in raw.items():
            if isinstance(value, Image.Image):
                # Lossless, with its EXIF orientation: parsed again, it turns out the same.
                data = encode_image(value, "png", 100, exif=value.getexif())
                recorded[name] = {IMAGE_KEY: self.playground.store.save(data, "png")}
            elif isinstance(value, tuple):
                recorded[name] = [list(item) if isinstance(item, tuple) else item for item in value]
            else:
                recorded[name] = value
        recorded["seed"] = request.seed
        return recorded

    def _raw(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        raw = {}
        for name, value in recorded.items():
            if isinstance(value, dict) and set(value) == {IMAGE_KEY}:
                path = self.playground.store.path(value[IMAGE_KEY])
                if path is None:
                    raise OSError(f"its input image {name} is no longer stored")
                raw[name] = Image.open(io.BytesIO(path.read_bytes()))
            else:
                raw[name] = value
        return raw
