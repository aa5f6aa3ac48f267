"""Asynchronous jobs (RunPod's `/run`, `/status`, `/cancel`): a queue served by one worker,
since one accelerator serves one request at a time."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.modes.request_types import GenerationRequest
from pipelines.service import (
    GenerationCancelled,
    GenerationError,
    GenerationResult,
    Playground,
)

# Finished jobs are forgotten after this long (their images stay for the result retention).
JOB_RETENTION_SECONDS = 24 * 3600


@dataclass
class Job:
    id: str
    request: GenerationRequest
    render: Callable[[GenerationResult], dict[str, Any]]  # the API's `output` object
    received_at: float
    status: str = "IN_QUEUE"  # IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED
    started_at: float | None = None
    finished_at: float | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def timings_ms(self) -> dict[str, int]:
        """RunPod's delayTime (waiting) and executionTime (running), in milliseconds."""
        now = time.monotonic()
        started = self.started_at or now
        return {"delayTime": round((started - self.received_at) * 1000),
                "executionTime": round(((self.finished_at or now) - started) * 1000) if self.started_at else 0}


class JobQueue:
    def __init__(self, playground: Playground):
        self.playground = playground
        self.jobs: dict[str, Job] = {}
        self.pending: queue.Queue[Job] = queue.Queue()
        self.lock = threading.Lock()
        threading.Thread(target=self._work, name="job-worker", daemon=True).start()

    def submit(self, request: GenerationRequest, render, received_at: float) -> Job:
        job = Job(id=str(uuid.uuid4()), request=request, render=render, received_at=received_at)
        with self.lock:
            self._forget_old()
            self.jobs[job.id] = job
        self.pending.put(job)
        return job

    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        with self.lock:
            return sum(job.status == "IN_QUEUE" for job in self.jobs.values())

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job at once, a running one at its next denoising step."""
        job = self.get(job_id)
        if job is not None and job.status in ("IN_QUEUE", "IN_PROGRESS"):
            job.cancel.set()
            if job.status == "IN_QUEUE":
                self._finish(job, "CANCELLED")
        return job

    def _work(self) -> None:
        while True:
            job = self.pending.get()
            if job.cancel.is_set():
                continue
            job.status, job.started_at = "IN_PROGRESS", time.monotonic()
            try:
                result = self.playground.execute(job.request, job.received_at, cancel=job.cancel)
                job.output = job.render(result)
                self._finish(job, "COMPLETED")
            except GenerationCancelled:
                self._finish(job, "CANCELLED")
            except GenerationError as error:
                job.error = str(error)
                self._finish(job, "FAILED")
            except Exception as error:  # the worker must survive anything a job does
                job.error = f"{type(error).__name__}: {error}"
                self._finish(job, "FAILED")

    def _finish(self, job: Job, status: str) -> None:
        job.status, job.finished_at = status, time.monotonic()

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - JOB_RETENTION_SECONDS
        for job_id in [j.id for j in self.jobs.values() if j.finished_at and j.finished_at < cutoff]:
            del self.jobs[job_id]
