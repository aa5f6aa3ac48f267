"""OpenAI's image streams, read by the official `openai` SDK with only `base_url` changed:
partial images (live previews) while the image is denoised, then the exact final image."""

from __future__ import annotations

import base64
import io
import time

import httpx
import openai
import pytest
from conftest import EXAMPLE_BIRD, wait_until
from PIL import Image

FAST = {"num_inference_steps": 4}
# Long enough to be caught running and cancelled: seconds on the demo model.
SLOW = {"num_inference_steps": 50, "seed": 8}


@pytest.fixture(scope="module")
def sdk(base_url):
    return openai.OpenAI(base_url=base_url + "v1", api_key="not-needed-locally")


def decoded(b64_json: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    image.load()
    return image


def test_generate_streams_partial_images_then_the_same_image_as_without_streaming(sdk):
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a lighthouse at dusk", size="320x256", stream=True,
                                      partial_images=2, extra_body={**FAST, "seed": 21}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    images = [decoded(event.b64_json) for event in events]
    assert all(image.format == "PNG" and image.size == (320, 256) for image in images)
    assert all(event.size == "320x256" and event.output_format == "png" for event in events)
    assert images[0].tobytes() != images[1].tobytes() != images[2].tobytes()  # the image takes shape
    assert events[-1].usage.total_tokens == 0 and events[-1].model_extra["seed"] == 21
    plain = sdk.images.generate(model="flux.1-dev", prompt="a lighthouse at dusk", size="320x256",
                                response_format="b64_json", extra_body={**FAST, "seed": 21})
    assert decoded(plain.data[0].b64_json).tobytes() == images[-1].tobytes()  # pixels; metadata differs


def test_each_image_has_its_partials_and_its_completed_event(sdk):
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", n=2, stream=True,
                                      partial_images=1, output_format="jpeg", extra_body={**FAST, "seed": 3}))
    kinds = [(event.type.split(".")[1], event.model_extra["image_index"]) for event in events]
    assert kinds == [("partial_image", 0), ("partial_image", 1), ("completed", 0), ("completed", 1)]
    assert [event.model_extra["seed"] for event in events[2:]] == [3, 4]
    assert all(decoded(event.b64_json).format == "JPEG" for event in events)


def test_edit_streams_image_edit_events(sdk):
    with open(EXAMPLE_BIRD, "rb") as bird:
        events = list(sdk.images.edit(model="flux.1-dev", image=bird, prompt="a red bird", size="256x256",
                                      stream=True, partial_images=1, extra_body={**FAST, "strength": 0.9, "seed": 5}))
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert all(decoded(event.b64_json).size == (256, 256) for event in events)


def test_no_partial_images_only_the_completed_event(sdk):
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", stream=True,
                                      partial_images=0, extra_body={**FAST, "seed": 1}))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert decoded(events[0].b64_json).size == (256, 256)


def test_more_partial_images_than_steps_give_one_per_step_before_the_last(sdk):
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", stream=True,
                                      partial_images=3, extra_body={"num_inference_steps": 2, "seed": 1}))
    assert [event.type for event in events] == ["image_generation.partial_image", "image_generation.completed"]


@pytest.mark.parametrize("count", [5, -1])
def test_partial_images_out_of_range_is_a_400_naming_it(sdk, count):
    with pytest.raises(openai.BadRequestError) as refused:
        list(sdk.images.generate(model="flux.1-dev", prompt="a fox", stream=True, partial_images=count))
    assert refused.value.body["param"] == "partial_images"
    assert f"partial_images must be an integer from 0 to 3, got {count}" in refused.value.body["message"]


def test_bad_values_are_refused_before_the_stream_starts(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="1000x1000", stream=True))
    assert refused.value.body["param"] == "size"


def test_streamed_avif_is_avif_throughout(sdk):
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", stream=True,
                                      partial_images=1, output_format="avif", extra_body={**FAST, "seed": 2}))
    assert [decoded(event.b64_json).format for event in events] == ["AVIF", "AVIF"]
    assert events[-1].output_format == "avif"


def test_a_stream_left_by_its_client_is_cancelled(base_url, playground):
    stored = len(playground.store.history(limit=None))
    body = {"model": "flux.1-dev", "prompt": "a fox", "size": "768x768", "stream": True, "partial_images": 3, **SLOW}
    started = time.monotonic()
    with httpx.Client(timeout=60) as client, client.stream("POST", base_url + "v1/images/generations",
                                                           json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in response.iter_lines() if line.startswith("event:"))
        assert first == "event: image_generation.partial_image"  # then the client goes away
    wait_until(lambda: playground.queue.counts() == {"waiting": 0, "running": 0}, 30)
    assert len(playground.store.history(limit=None)) == stored  # stopped, not run to the end and stored
    assert time.monotonic() - started < 60


def test_a_failure_ends_the_stream_with_an_error_the_sdk_raises(sdk, playground, monkeypatch):
    monkeypatch.setattr(playground, "time_limit_seconds", 1e-6)  # stops the run at its first step
    stream = sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", stream=True, partial_images=1,
                                 extra_body=FAST)
    with pytest.raises(openai.APIError, match="longer than the time limit"):
        list(stream)


def test_a_quiet_stream_sends_comments_the_sdk_skips(sdk, base_url, monkeypatch):
    import rest.openai_stream

    monkeypatch.setattr(rest.openai_stream, "KEEPALIVE_SECONDS", 0.005)
    body = {"model": "flux.1-dev", "prompt": "a fox", "size": "256x256", "stream": True, **FAST, "seed": 1}
    with httpx.Client(timeout=60) as client, client.stream("POST", base_url + "v1/images/generations",
                                                           json=body) as response:
        lines = list(response.iter_lines())
    assert ": keep-alive" in lines and lines[-3] == "event: image_generation.completed"
    events = list(sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", stream=True,
                                      extra_body={**FAST, "seed": 1}))
    assert [event.type for event in events] == ["image_generation.completed"]
