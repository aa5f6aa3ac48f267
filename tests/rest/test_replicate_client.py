"""Replicate's own Python client (`replicate`), unchanged, pointed at the app: run, stream,
predictions create/get/cancel/list, models and versions, file inputs; and the OpenAI SDK's
`models.retrieve` beside it under the same `/v1`."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import openai
import pytest
import replicate
import requests
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, image_at, wait_until
from PIL import Image
from replicate.exceptions import ReplicateError

from rest.common import data_uri

DEV, KONTEXT, REDUX = (f"black-forest-labs/{name}" for name in ("flux-dev", "flux-kontext-dev", "flux-redux-dev"))
QUICK = {"prompt": "a fox", "megapixels": "0.25", "num_inference_steps": 2, "seed": 7}
# About a second a step at one megapixel on the demo's CPU: long enough to watch and to cancel.
SLOW = {"prompt": "a fox", "megapixels": "1", "num_inference_steps": 40, "seed": 8}


@pytest.fixture(scope="module")
def api(base_url):
    return replicate.Client(api_token="unused", base_url=base_url.rstrip("/"))




def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)




def test_run_returns_webp_urls_at_the_aspect_ratio_and_megapixels(api):
    output = api.run(DEV, input={**QUICK, "aspect_ratio": "16:9", "num_outputs": 2})
    images = [image_at(url) for url in output]
    assert [(image.format, image.size) for image in images] == [("WEBP", (672, 384))] * 2  # 16:9 at 0.25 MP
    assert pixels(images[0]).std() > 5 and not np.array_equal(pixels(images[0]), pixels(images[1]))  # seeds 7, 8
    first, second = (image_at(api.run(DEV, input={**QUICK, "output_format": "png"})[0]) for _ in range(2))
    assert first.format == "PNG" and np.array_equal(pixels(first), pixels(second))  # the same seed, the same image


def test_image_to_image_follows_the_image_and_prompt_strength(api):
    def one(**changes):
        with open(EXAMPLE_LAKE, "rb") as lake:  # 768x512: the output takes its 3:2 at 0.25 MP
            return image_at(api.run(DEV, input={**QUICK, "image": lake, "output_format": "png", **changes})[0])

    weak, strong = one(prompt_strength=0.3, num_inference_steps=4), one(prompt_strength=0.9, num_inference_steps=4)
    text_only = image_at(api.run(DEV, input={**QUICK, "aspect_ratio": "3:2", "num_inference_steps": 4,
                                             "output_format": "png"})[0])
    assert weak.size == strong.size == text_only.size == (624, 416)
    assert not np.array_equal(pixels(weak), pixels(strong))
    assert not np.array_equal(pixels(strong), pixels(text_only))


def test_kontext_takes_a_file_which_the_client_uploads(api):
    with open(EXAMPLE_BIRD, "rb") as bird:  # 640x640
        output = api.run(KONTEXT, input={"prompt": "the same bird on a cloud", "input_image": bird,
                                         "num_inference_steps": 2, "seed": 3})
    assert isinstance(output, str)  # Kontext answers one URI
    image = image_at(output)
    assert image.format == "WEBP" and image.size == (1024, 1024)  # Kontext's resolution for a square input
    uploaded = api.files.list()[0]
    assert uploaded.name == "bluebird.jpg" and uploaded.content_type == "image/jpeg"
    assert requests.get(uploaded.urls["get"] + "/download", timeout=30).content == Path(EXAMPLE_BIRD).read_bytes()


def test_kontext_at_an_aspect_ratio_and_under_the_image_alias(api):
    with open(EXAMPLE_BIRD, "rb") as bird:
        output = api.run(KONTEXT, input={"prompt": "a bird", "image": bird, "aspect_ratio": "16:9",
                                         "num_inference_steps": 2, "output_format": "jpg"})
    image = image_at(output)
    assert image.format == "JPEG" and image.size == (1392, 752)  # Kontext's trained 16:9 resolution


def test_redux_variations_of_an_image(api):
    with open(EXAMPLE_BIRD, "rb") as bird:
        output = api.run(REDUX, input={"redux_image": bird, "aspect_ratio": "3:2", "megapixels": "0.25",
                                       "num_inference_steps": 2, "num_outputs": 2, "seed": 5})
    images = [image_at(url) for url in output]
    assert [(image.format, image.size) for image in images] == [("WEBP", (624, 416))] * 2


def test_create_then_wait_then_get(api):
    prediction = api.predictions.create(model=DEV, input=QUICK)
    assert prediction.status in ("starting", "processing") and prediction.output is None
    assert prediction.urls["get"].endswith(f"/v1/predictions/{prediction.id}")
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.error is None
    fetched = api.predictions.get(prediction.id)
    assert fetched.output == prediction.output and image_at(fetched.output[0]).size == (512, 512)
    assert fetched.model == DEV and fetched.input == QUICK
    assert "Using seed: 7" in fetched.logs and "100%|██████████| 2/2" in fetched.logs
    assert fetched.progress.current == fetched.progress.total == 2
    created, completed = (datetime.fromisoformat(value) for value in (fetched.created_at, fetched.completed_at))
    assert created <= completed and 0 < fetched.metrics["predict_time"] <= fetched.metrics["total_time"]
    assert prediction.id in [listed.id for listed in api.predictions.list()]


def test_a_version_runs_its_model(api):
    version = api.models.get(DEV).latest_version
    prediction = api.predictions.create(version=version.id, input=QUICK)
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.version == version.id
    assert image_at(api.run(f"{DEV}:{version.id}", input=QUICK)[0]).size == (512, 512)


def test_progress_while_running_then_cancel(api):
    prediction = api.predictions.create(model=DEV, input=SLOW)

    def progressed():
        prediction.reload()
        return prediction.progress is not None and prediction.progress.current >= 2

    wait_until(progressed)
    assert prediction.status == "processing" and prediction.progress.total == 40
    assert 0 < prediction.progress.percentage < 1
    prediction.cancel()
    assert prediction.status == "canceled"


def test_cancel_a_running_prediction_then_the_next_runs(api):
    prediction = api.predictions.create(model=DEV, input=SLOW)
    wait_until(lambda: api.predictions.get(prediction.id).status == "processing")
    canceled = api.predictions.cancel(prediction.id)
    assert canceled.status == "canceled" and canceled.output is None and canceled.completed_at
    events = list(prediction.stream())
    assert events[-1].event.value == "done" and "canceled" in events[-1].data
    assert image_at(api.run(DEV, input=QUICK)[0]).size == (512, 512)  # the accelerator is free again


def test_stream_sends_logs_then_the_output_then_done(api):
    events = list(api.stream(DEV, input={**QUICK, "num_inference_steps": 4}))
    kinds = [event.event.value for event in events]
    assert kinds[-2:] == ["output", "done"] and set(kinds[:-2]) == {"logs"}
    logs = [event.data for event in events[:-2]]
    assert logs[0] == "Using seed: 7"
    assert [line.split("|")[2].split("[")[0].strip() for line in logs[1:5]] == ["1/4", "2/4", "3/4", "4/4"]
    assert len({event.id for event in events}) == len(events)
    assert image_at(str(events[-2].data)).size == (512, 512)


def test_prefer_wait_running_out_still_gets_the_output(api):
    started = time.monotonic()
    prediction = api.predictions.create(model=DEV, input={**SLOW, "num_inference_steps": 6}, wait=1)
    assert time.monotonic() - started < 1.5 and prediction.status == "starting"  # so that run() polls
    prediction.wait()
    assert prediction.status == "succeeded"
    output = api.run(DEV, input={**SLOW, "num_inference_steps": 6}, wait=1)
    assert image_at(output[0]).size == (1024, 1024)


def test_model_and_version_carry_the_input_schema(api):
    model = api.models.get(DEV)
    assert (model.owner, model.name, model.id) == ("black-forest-labs", "flux-dev", DEV)
    schemas = model.latest_version.openapi_schema["components"]["schemas"]
    inputs = schemas["Input"]
    assert inputs["required"] == ["prompt"] and schemas["Output"]["type"] == "array"
    properties = inputs["properties"]
    assert {name: properties[name].get("default") for name in ("aspect_ratio", "guidance", "num_inference_steps",
                                                                "output_format", "output_quality", "megapixels",
                                                                "prompt_strength", "go_fast")} == {
        "aspect_ratio": "1:1", "guidance": 3, "num_inference_steps": 28, "output_format": "webp",
        "output_quality": 80, "megapixels": "1", "prompt_strength": 0.8, "go_fast": True}
    assert (properties["num_outputs"]["minimum"], properties["num_outputs"]["maximum"]) == (1, 4)
    assert properties["output_format"]["enum"] == ["webp", "jpg", "png"] and properties["image"]["format"] == "uri"
    assert [version.id for version in model.versions.list()] == [model.latest_version.id]
    assert model.versions.get(model.latest_version.id).openapi_schema == model.latest_version.openapi_schema
    kontext = api.models.get(KONTEXT).latest_version.openapi_schema["components"]["schemas"]
    assert kontext["Output"]["type"] == "string" and kontext["Input"]["required"] == ["prompt", "input_image"]
    assert kontext["Input"]["properties"]["aspect_ratio"]["default"] == "match_input_image"
    assert kontext["Input"]["properties"]["guidance"]["default"] == 2.5
    assert kontext["Input"]["properties"]["num_inference_steps"]["default"] == 30


BIRD_URI = data_uri(Path(EXAMPLE_BIRD).read_bytes(), "image/jpeg")


@pytest.mark.parametrize("model, change, words", [
    (DEV, {"num_outputs": 9}, "- input.num_outputs: num_outputs must be an integer from 1 to 4, got 9"),
    (DEV, {"guidance": 25}, "- input.guidance: guidance must be a number from 0 to 20, got 25"),
    (DEV, {"image": BIRD_URI, "prompt_strength": 2}, "prompt_strength must be a number from 0.01 to 1, got 2"),
    (DEV, {"image": "data:image/png;base64,!!"}, "- input.image: image holds invalid base64 data"),
    (DEV, {"aspect_ratio": "7:3"}, "aspect_ratio must be one of 1:1, 16:9"),
    (DEV, {"output_format": "gif"}, "output_format must be one of webp, jpg, png; got 'gif'"),
    (DEV, {"go_fast": "yes"}, "go_fast must be true or false, got 'yes'"),
    (DEV, {"prompt": "  "}, "- input.prompt: prompt is required"),
    (DEV, {"image": "http://127.0.0.1:9/bird.png"}, "- input.image: image: 127.0.0.1 resolves to 127.0.0.1"),
    (KONTEXT, {}, "- input.input_image: input_image is required"),
    (REDUX, {"redux_image": "{base}v1/files/0123456789abcdef0123456789abcdef"}, "is not stored here"),
])
def test_bad_input_is_refused_before_anything_is_queued(api, playground, base_url, model, change, words):
    before = len(api.predictions.list().results)
    change = {name: value.format(base=base_url) if isinstance(value, str) else value for name, value in change.items()}
    with pytest.raises(ReplicateError) as refused:
        api.predictions.create(model=model, input={**QUICK, **change})
    assert refused.value.status == 422 and refused.value.title == "Input validation failed"
    assert words in refused.value.detail
    assert len(api.predictions.list().results) == before and playground.queue.counts()["waiting"] == 0


def test_a_full_line_is_429_and_nothing_is_queued(api, playground, monkeypatch):
    before = len(api.predictions.list().results)
    monkeypatch.setattr(playground.queue, "max_waiting", 0)
    assert playground.queue.reserve()  # the one place there is (it lapses in 2 s)
    with pytest.raises(ReplicateError) as refused:
        api.predictions.create(model=DEV, input=QUICK)
    assert refused.value.status == 429 and "busy" in refused.value.detail
    assert len(api.predictions.list().results) == before


def test_unknown_model_version_and_prediction_are_refused(api, base_url):
    with pytest.raises(ReplicateError) as unknown_run:
        api.run("black-forest-labs/flux-pro", input=QUICK)
    assert unknown_run.value.status == 404 and "black-forest-labs/flux-dev" in unknown_run.value.detail
    with pytest.raises(ReplicateError) as unknown_model:
        api.models.get("black-forest-labs/flux-pro")
    assert unknown_model.value.status == 404
    body = requests.get(base_url + "v1/models/black-forest-labs/flux-pro", timeout=30).json()
    assert body["status"] == 404 and body["error"]["param"] == "model"  # either API may have asked
    with pytest.raises(ReplicateError) as unknown_prediction:
        api.predictions.get("no-such-prediction")
    assert unknown_prediction.value.status == 404
    with pytest.raises(ReplicateError) as unknown_version:
        api.predictions.create(version="0" * 64, input=QUICK)
    assert unknown_version.value.status == 422 and unknown_version.value.title == "Invalid version or not permitted"
    refused = requests.post(base_url + "v1/models/black-forest-labs/flux-dev/predictions", json={"input": 3},
                            timeout=30)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("- input:")
    with pytest.raises(ReplicateError, match="webhooks"):
        api.predictions.create(model=DEV, input=QUICK, webhook="https://example.com/hook")


def test_openai_model_routes_live_beside_replicates(api, base_url):
    sdk = openai.OpenAI(base_url=base_url + "v1", api_key="unused")
    assert sdk.models.retrieve("flux.1-dev").id == "flux.1-dev"
    assert sdk.models.retrieve("black-forest-labs/FLUX.1-dev").owned_by == "black-forest-labs"
    assert sdk.models.retrieve("black-forest-labs/flux-dev").object == "model"  # the SDK encodes the slash
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("dall-e-3")
    assert len(sdk.models.list().data) == 3
    assert api.models.get(DEV).latest_version.cog_version
