"""OpenAI's image streams (`stream=true`): server-sent events as the openai SDK's
`Stream[ImageGenStreamEvent]` and `Stream[ImageEditStreamEvent]` read them.

For each image, up to `partial_images` (0-3) `<kind>.partial_image` events: live previews
(the cheap latent projection of `pipelines/imaging/previews.py`, at the image's size, in the
format asked for) after denoising steps spread evenly over the run; then one
`<kind>.completed` event per image with the exact final image. `<kind>` is
`image_generation` or `image_edit`. Images are denoised one after the other and stored
together, so with `n` > 1 every image's partials come before the completed events; each event
carries its `image_index`. A failure ends the stream with an `error` event, which the SDK
raises as an APIError. The stream ends without OpenAI's chat `[DONE]`, as its image streams do.

The request takes its place in the one line before the stream starts (busy is a 503 then),
runs through `Playground.execute` like any other, and is cancelled if the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from pipelines.errors import FieldError, GenerationCancelled, GenerationError
from pipelines.imaging.images import encode_image
from pipelines.imaging.previews import preview_image, spread_previews
from pipelines.modes.generation import StepCallback
from pipelines.modes.request_types import GenerationRequest
from pipelines.service import GenerationResult, Playground, StoredImage
from rest.common import KEEPALIVE, KEEPALIVE_SECONDS, event_stream, sse
from rest.openai_formats import final_images

log = logging.getLogger("flux_playground")

MAX_PARTIAL_IMAGES = 3  # OpenAI's range is 0-3
# FLUX is not billed by the token, but the SDK's completed events carry `usage`.
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0}


@dataclass(frozen=True)
class StreamSpec:
    kind: str  # "image_generation" or "image_edit": the events' type prefix
    partial_images: int  # per image
    output_format: str  # as asked for


@dataclass(frozen=True)
class Partial:
    """A live preview, handed from the generation's thread to the stream."""

    image: Image.Image
    image_index: int
    partial_image_index: int


def partial_image_count(values: dict[str, Any]) -> int:
    """OpenAI's `partial_images`, 0 when not given; a FieldError outside 0-3."""
    count = values.get("partial_images")
    if count is None:
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_PARTIAL_IMAGES:
        raise FieldError("partial_images", f"partial_images must be an integer from 0 to {MAX_PARTIAL_IMAGES}, "
                                           f"got {count!r}")
    return count


def image_event(spec: StreamSpec, stage: str, data: bytes, size: tuple[int, int], **extra: Any) -> dict[str, Any]:
    """One of OpenAI's image stream events: `stage` is partial_image or completed."""
    return {"type": f"{spec.kind}.{stage}", "b64_json": base64.b64encode(data).decode(), "created_at": int(time.time()),
            "size": f"{size[0]}x{size[1]}", "quality": "auto", "background": "opaque",
            "output_format": spec.output_format, **extra}


def partial_event(spec: StreamSpec, partial: Partial, quality: int) -> dict[str, Any]:
    data = encode_image(partial.image, spec.output_format, quality)
    return image_event(spec, "partial_image", data, partial.image.size, image_index=partial.image_index,
                       partial_image_index=partial.partial_image_index)


def completed_event(spec: StreamSpec, image: StoredImage, index: int) -> dict[str, Any]:
    return image_event(spec, "completed", image.file.read_bytes(), (image.width, image.height), usage=NO_USAGE,
                       image_index=index, seed=image.seed)


def error_event(error: Exception) -> dict[str, Any]:
    """What ends a failed stream: OpenAI's error object, which the SDK raises."""
    message = str(error) if isinstance(error, GenerationError) else f"Generation failed ({type(error).__name__})"
    return {"type": "error", "error": {"message": message, "type": "server_error", "param": None,
                                       "code": "generation_failed"}}


def partial_sender(request: GenerationRequest, spec: StreamSpec, send: Callable[[Partial], None]) -> StepCallback:
    """The step callback making each image's partial images, after steps spread evenly over
    its run, at the image's own size. Encoding is left to the stream: the accelerator goes on."""

    chosen: dict[int, int] | None = None  # step index -> partial image index, once the steps are known

    def on_step(image_index: int, step: int, steps: int, latents) -> None:
        nonlocal chosen
        if chosen is None:
            chosen = {index: n for n, index in enumerate(sorted(spread_previews(steps, spec.partial_images)))}
        if step - 1 in chosen:
            preview = preview_image(latents, request.height, request.width, max(request.width, request.height))
            send(Partial(preview, image_index, chosen[step - 1]))

    return on_step


def start_run(playground: Playground, request: GenerationRequest, received_at: float, spec: StreamSpec,
              cancel: threading.Event) -> asyncio.Queue:
    """Join the line now (ServerBusy when it is full) and run the request in its own thread.
    The queue gets each Partial as it is made, then what the run ended with: its
    GenerationResult or the exception that stopped it."""
    ticket = playground.enqueue(request, received_at)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def send(item: Partial | GenerationResult | Exception) -> None:
        loop.call_soon_threadsafe(events.put_nowait, item)

    def run() -> None:
        try:
            outcome = playground.execute(request, received_at, partial_sender(request, spec, send), cancel, ticket)
        except Exception as error:  # whatever ended the run ends the stream
            if not isinstance(error, GenerationError):
                log.exception("streamed request failed")
            outcome = error
        send(outcome)

    threading.Thread(target=run, daemon=True, name=f"{spec.kind}-stream").start()
    return events


async def next_item(events: asyncio.Queue) -> Partial | GenerationResult | Exception | None:
    """The run's next event, or None when it has been quiet for KEEPALIVE_SECONDS."""
    try:
        return await asyncio.wait_for(events.get(), KEEPALIVE_SECONDS)
    except TimeoutError:
        return None


def named(event: dict[str, Any]) -> str:
    """An event as OpenAI sends it: named by its type."""
    return sse(event, event["type"])


async def outcome_events(playground: Playground, outcome: GenerationResult | Exception,
                         spec: StreamSpec) -> AsyncIterator[str]:
    """What ends a stream: a completed event per image, or the error that stopped the run."""
    if isinstance(outcome, GenerationCancelled):  # the client went away: no one to tell
        return
    if isinstance(outcome, Exception):
        yield named(error_event(outcome))
        return
    images = await run_in_threadpool(final_images, playground.store, outcome, spec.output_format)
    for index, image in enumerate(images):
        yield named(await run_in_threadpool(completed_event, spec, image, index))


async def stream_events(playground: Playground, events: asyncio.Queue, spec: StreamSpec, quality: int,
                        cancel: threading.Event) -> AsyncIterator[str]:
    """Each partial image as it comes (a comment while the run is quiet), then the outcome."""
    try:
        while isinstance(item := await next_item(events), Partial | None):
            yield KEEPALIVE if item is None else named(await run_in_threadpool(partial_event, spec, item, quality))
        async for text in outcome_events(playground, item, spec):
            yield text
    finally:
        cancel.set()  # stops a generation whose client went away; does nothing once it finished


def image_stream(playground: Playground, request: GenerationRequest, received_at: float,
                 spec: StreamSpec) -> StreamingResponse:
    """The request's stream; ServerBusy before anything is sent when the line is full."""
    cancel = threading.Event()
    events = start_run(playground, request, received_at, spec, cancel)
    return event_stream(stream_events(playground, events, spec, request.output_quality, cancel),
                        background=BackgroundTask(cancel.set))
