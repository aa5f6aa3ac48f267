"""Replicate's prediction object and its event stream, made from a job of the durable store.

`logs` are the lines Replicate's FLUX models print: the seed, then a tqdm progress bar per
denoising step (the client's `prediction.progress` parses them), then the result's warnings.
They only grow as the job goes on, so the stream hands out each line once, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pipelines.jobs.runner import JobRunner, LiveJob, StepEvent
from pipelines.jobs.store import JobRecord
from rest.common import JOB_POLL_SECONDS, KEEPALIVE, KEEPALIVE_SECONDS, result_url_at
from rest.replicate_files import iso_time
from rest.replicate_models import MODELS, VERSION_IDS

# The store's states in Replicate's words.
STATUS_WORDS = {"queued": "starting", "running": "processing", "completed": "succeeded", "failed": "failed",
                "cancelled": "canceled"}
BAR_WIDTH = 10
PARTIAL_BLOCKS = " ▏▎▍▌▋▊▉"  # tqdm's eighths of a bar cell


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:02d}:{seconds:02d}"


def tqdm_line(step: int, steps: int, elapsed: float) -> str:
    """A progress line as tqdm prints it: ' 43%|████▎     | 12/28 [00:03<00:04,  3.43it/s]'."""
    filled = step / steps * BAR_WIDTH
    whole = int(filled)
    bar = "█" * whole + (PARTIAL_BLOCKS[int((filled - whole) * 8)] if whole < BAR_WIDTH else "")
    rate = step / elapsed if elapsed > 0 else 0.0
    remaining = (steps - step) / rate if rate else 0.0
    return (f"{step / steps * 100:3.0f}%|{bar:<{BAR_WIDTH}}| {step}/{steps} "
            f"[{clock(elapsed)}<{clock(remaining)}, {rate:5.2f}it/s]")


def progress_lines(steps: list[StepEvent], started_at: float) -> list[str]:
    """One bar per image: each image's bar starts when the previous image's last step ended."""
    lines, bar_start, last_at, image = [], started_at, started_at, None
    for event in steps:
        if event.image_index != image:
            image, bar_start = event.image_index, last_at
        lines.append(tqdm_line(event.step, event.steps, event.at - bar_start))
        last_at = event.at
    return lines


def log_lines(record: JobRecord, live: LiveJob | None) -> list[str]:
    lines = [f"Using seed: {record.request['seed']}"]
    lines += [f"Ignored input {name!r}: {record.route} has no such input" for name in record.options["ignored"]]
    if live is not None and record.started_at is not None:
        lines += progress_lines(list(live.steps), record.started_at)
    if record.result is not None:
        lines += record.result["warnings"]
        lines.append(f"Generated {len(record.result['images'])} image(s) in {record.result['executed_ms'] / 1000:.2f}s")
    return lines


def output_urls(record: JobRecord, base: str) -> list[str]:
    return [result_url_at(base, image["result_id"]) for image in record.result["images"]]


def output(record: JobRecord, base: str) -> Any:
    """A list of URIs (flux-dev, Redux) or one URI (Kontext), once the job succeeded."""
    if record.result is None:
        return None
    urls = output_urls(record, base)
    return urls if MODELS[record.route].output_is_list else urls[0]


def metrics(record: JobRecord) -> dict[str, float]:
    if record.finished_at is None:
        return {}
    times = {"total_time": record.finished_at - record.created_at}
    if record.started_at is not None:
        times["predict_time"] = record.finished_at - record.started_at
    return {name: round(seconds, 3) for name, seconds in times.items()}


def prediction_urls(job_id: str, base: str) -> dict[str, str]:
    get = f"{base}/v1/predictions/{job_id}"
    return {"get": get, "cancel": f"{get}/cancel", "stream": f"{get}/stream"}


def prediction_json(record: JobRecord, live: LiveJob | None, base: str) -> dict[str, Any]:
    return {
        "id": record.id, "model": record.route, "version": VERSION_IDS[record.route],
        "input": record.options["input"], "output": output(record, base), "logs": "\n".join(log_lines(record, live)),
        "error": record.error, "status": STATUS_WORDS[record.status], "source": "api", "data_removed": False,
        "created_at": iso_time(record.created_at), "started_at": iso_time(record.started_at),
        "completed_at": iso_time(record.finished_at), "metrics": metrics(record),
        "urls": prediction_urls(record.id, base),
    }


# -- the event stream ------------------------------------------------------------------------

def sse(event: str, data: str, event_id: int) -> str:
    data_lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\nid: {event_id}\n{data_lines}\n"


def final_events(record: JobRecord, base: str) -> list[tuple[str, str]]:
    """What ends a stream: each output URL, or the error; then done (with the reason, if cancelled)."""
    if record.status == "completed":
        return [*(("output", url) for url in output_urls(record, base)), ("done", "{}")]
    if record.status == "failed":
        return [("error", json.dumps({"detail": record.error})), ("done", "{}")]
    return [("done", json.dumps({"reason": "canceled"}))]


async def prediction_events(jobs: JobRunner, job_id: str, base: str) -> AsyncIterator[str]:
    """Server-sent events: `logs` for each new log line, then `output`s or `error`, then `done`."""
    ids, sent, quiet_since = itertools.count(), 0, time.monotonic()
    record = jobs.get(job_id)
    while True:
        live = jobs.live(job_id)
        if live is None or live.done.is_set() or record.started_at is None:
            record = jobs.get(job_id)
        lines = log_lines(record, live)
        for line in lines[sent:]:
            yield sse("logs", line, next(ids))
            quiet_since = time.monotonic()
        sent = max(sent, len(lines))
        if record.finished:
            break
        if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield KEEPALIVE
            quiet_since = time.monotonic()
        await asyncio.sleep(JOB_POLL_SECONDS)
    for event, data in final_events(record, base):
        yield sse(event, data, next(ids))
