"""What the REST adapters share: model names, settings, running a request, result URLs."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError
from pipelines.jobs.runner import JobRunner
from pipelines.jobs.store import JobRecord
from pipelines.service import GenerationResult, Playground
from rest.arrival import arrival_time
from rest.inputs import FetchPolicy

# How often a request waiting on a job looks at it.
JOB_POLL_SECONDS = 0.05
# A stream sends a comment when it has been quiet this long, so that clients' read timeouts
# (the replicate client's: 30 s) and proxies' do not end it while a request waits its turn.
KEEPALIVE_SECONDS = 15
KEEPALIVE = ": keep-alive\n\n"
# The names each hosted API uses for the three models, and the repository each means.
MODEL_ALIASES = {
    "dev": ("flux.1-dev", "flux-dev", "flux-1-dev", "black-forest-labs/flux.1-dev",
            "black-forest-labs-flux-1-dev", "fal-ai/flux/dev", "black-forest-labs/flux-dev"),
    "kontext": ("flux.1-kontext-dev", "flux-kontext-dev", "flux-1-kontext-dev",
                "black-forest-labs/flux.1-kontext-dev", "black-forest-labs-flux-1-kontext-dev",
                "fal-ai/flux-kontext/dev", "black-forest-labs/flux-kontext-dev"),
    "redux": ("flux.1-redux-dev", "flux-redux-dev", "flux-1-redux-dev", "black-forest-labs/flux.1-redux-dev",
              "black-forest-labs-flux-1-redux-dev", "fal-ai/flux/dev/redux", "black-forest-labs/flux-redux-dev"),
}
# The mode a model runs when the API does not say otherwise.
MODEL_MODES = {"dev": "text_to_image", "kontext": "kontext_edit", "redux": "redux_variation"}


class UnknownModel(LookupError):
    def __init__(self, name: str):
        known = ", ".join(aliases[0] for aliases in MODEL_ALIASES.values())
        super().__init__(f"Unknown model {name!r}; this server serves {known} (and their hosted-API names)")


def resolve_model(name: str) -> str:
    """'dev', 'kontext' or 'redux' for any of the names the hosted APIs use (case-insensitive)."""
    wanted = name.strip().lower()
    for key, aliases in MODEL_ALIASES.items():
        if wanted in aliases:
            return key
    raise UnknownModel(name)


@dataclass
class RestSettings:
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    public_url: str | None = None  # the base of result URLs; by default, the request's own
    api_key: str | None = None  # when set, every REST route asks for it


def rename_field(error: FieldError, names: dict[str, str]) -> tuple[str, str]:
    """An error's field and message in an API's own vocabulary: a synonym replaces our name
    (guidance_scale -> guidance); a field standing for several of ours prefixes it
    ("size: height must be ...")."""
    api_name = names.get(error.field, error.field)
    message = error.message
    if api_name != error.field:
        if list(names.values()).count(api_name) > 1:
            message = f"{api_name}: {message}"
        elif message.startswith(error.field):
            message = api_name + message[len(error.field):]
    return api_name, message


def first_error(error: FieldError, names: dict[str, str]) -> tuple[str, str]:
    return rename_field(error.problems[0], names)


def all_errors_message(error: FieldError, names: dict[str, str]) -> str:
    return "; ".join(rename_field(problem, names)[1] for problem in error.problems)


async def run_request(playground: Playground, mode: str, raw: dict[str, Any], http: Request,
                      cancel=None) -> GenerationResult:
    """Validate (FieldError) and run (GenerationError) off the event loop: the accelerator
    lock is held for the whole generation."""
    parsed = playground.parse(mode, raw)
    return await run_in_threadpool(playground.execute, parsed, arrival_time(http.scope), None, cancel)


def public_base(http: Request, settings: RestSettings) -> str:
    """The base of the URLs this server hands out (no trailing slash): `--public-url`, else the
    request's own."""
    return (settings.public_url or str(http.base_url)).rstrip("/")


def result_url(http: Request, settings: RestSettings, result_id: str) -> str:
    return result_url_at(public_base(http, settings), result_id)


def result_url_at(base: str, result_id: str) -> str:
    return f"{base}/results/{result_id}"


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def sse(data: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event carrying `data` as JSON, named `event` where given."""
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {json.dumps(data)}\n\n"


def event_stream(events: AsyncIterator[str], background: BackgroundTask | None = None) -> StreamingResponse:
    """Server-sent events, each sent as it comes: no caching, no buffering by a proxy (nginx)."""
    return StreamingResponse(events, media_type="text/event-stream", background=background,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def acceleration_step_cache(acceleration: str) -> str:
    """fal's per-request `acceleration` as a request's step caching: high caches, none and
    regular do not (compilation and quantization are the server's --acceleration)."""
    return "first_block" if acceleration == "high" else "off"


def go_fast_step_cache(go_fast: bool) -> str:
    """Replicate's `go_fast` as a request's step caching: the server's own (its acceleration
    profile's default), or none."""
    return "auto" if go_fast else "off"


async def wait_for_job(jobs: JobRunner, job_id: str, timeout: float) -> JobRecord | None:
    """The job once it finished, or as it is after `timeout` seconds; waits without holding
    a thread, so that many clients may wait at once."""
    deadline = time.monotonic() + timeout
    while (live := jobs.live(job_id)) is not None and not live.done.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(JOB_POLL_SECONDS)
    return jobs.get(job_id)
