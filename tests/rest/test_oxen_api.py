"""Oxen.ai's image API, driven with `requests` as Oxen's docs do (there is no official Python
client): sync generation and editing, the async queue, the completion events and the model schema."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import requests
from conftest import EXAMPLE_BIRD, REPO, image_at, wait_until
from PIL import Image, ImageStat

from pipelines.jobs.store import JobStore
from rest import oxen_api
from rest.oxen_schema import size_table

QUICK = {"aspect_ratio": "1:1", "image_size": "optimize_for_speed", "num_inference_steps": 2}  # 576x576
SLOW = {"aspect_ratio": "1:1", "image_size": "optimize_for_speed", "num_inference_steps": 50}
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def api(base_url):
    return base_url + "api"


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_drawn(image: Image.Image) -> None:
    """A generated picture, not a flat fill (an empty or blacked-out result)."""
    assert max(ImageStat.Stat(image.convert("RGB")).stddev) > 1


def bird_data_uri() -> str:
    return "data:image/jpeg;base64," + base64.b64encode((REPO / EXAMPLE_BIRD).read_bytes()).decode()


def poll(api: str, generation_id: str, seconds: float = 120) -> dict:
    """Poll a generation until it reaches a terminal status, as Oxen's model pages do."""
    def finished() -> dict | None:
        data = requests.get(f"{api}/ai/queue/{generation_id}", timeout=10).json()
        return data if data["status"] in TERMINAL else None

    return wait_until(finished, seconds)


def job_counts(playground) -> dict[str, int]:
    return JobStore(playground.store.folder).counts(oxen_api.API)


def test_generate_answers_with_image_urls(api):
    response = requests.post(f"{api}/ai/images/generate", timeout=120, json={
        "model": "flux-1-dev", "prompt": "A red cube on a white background, minimal", "aspect_ratio": "16:9",
        "image_size": "optimize_for_speed", "num_inference_steps": 2, "seed": 42, "output_format": "jpg"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == "flux-1-dev" and abs(data["created"] - time.time()) < 120
    [item] = data["images"]
    image = image_at(item["url"])
    assert (image.format, image.size) == ("JPEG", (768, 432))  # 16:9 at optimize_for_speed
    assert_drawn(image)


def test_generate_b64_json_is_webp_by_default(api):
    response = requests.post(f"{api}/ai/images/generate", timeout=120, json={
        "model": "black-forest-labs/FLUX.1-dev", "prompt": "A blue sphere on grey background",
        "response_format": "b64_json", "aspect_ratio": "9:16", "image_size": "optimize_for_speed",
        "num_inference_steps": 2, "n": 2})
    assert response.status_code == 200, response.text
    images = [image_of(base64.b64decode(item["b64_json"])) for item in response.json()["images"]]
    assert [(image.format, image.size) for image in images] == [("WEBP", (432, 768))] * 2
    assert images[0].tobytes() != images[1].tobytes()  # seed and seed + 1
    assert_drawn(images[0])


def test_edit_takes_a_data_uri_input_image(api):
    response = requests.post(f"{api}/ai/images/edit", timeout=180, json={
        "model": "flux-kontext-dev", "input_image": bird_data_uri(), "prompt": "Add a funny hat to the bird",
        "aspect_ratio": "match_input_image", "num_inference_steps": 4, "response_format": "b64_json",
        "output_format": "png"})
    assert response.status_code == 200, response.text
    [item] = response.json()["images"]
    image = image_of(base64.b64decode(item["b64_json"]))
    assert (image.format, image.size) == ("PNG", (1024, 1024))  # Kontext's resolution for a square input
    assert_drawn(image)


def test_edit_fetches_an_input_image_url(api, image_server, rest_settings):
    rest_settings.fetch.allow_private = True  # the test image server is on loopback
    response = requests.post(f"{api}/ai/images/edit", timeout=180, json={
        "model": "black-forest-labs/FLUX.1-Kontext-dev", "input_image": f"{image_server}/bluebird.jpg",
        "prompt": "now perched on a cloud", "aspect_ratio": "21:9", "num_inference_steps": 4})
    assert response.status_code == 200, response.text
    image = image_at(response.json()["images"][0]["url"])
    assert (image.format, image.size) == ("WEBP", (1568, 672))


def test_queue_runs_each_generation_to_succeeded(api):
    response = requests.post(f"{api}/ai/queue", timeout=30, json={
        "model": "flux-1-dev", "prompt": "Abstract geometric pattern in blue and gold", **QUICK, "seed": 7,
        "output_format": "png", "num_generations": 2})
    assert response.status_code == 200, response.text
    generations = response.json()["generations"]
    assert len(generations) == 2 and all(g["status"] in ("queued", "processing") for g in generations)
    done = [poll(api, g["generation_id"]) for g in generations]
    assert [d["status"] for d in done] == ["succeeded"] * 2 and [d["seed"] for d in done] == [7, 8]
    for data in done:
        assert data["model_name"] == "flux-1-dev" and data["media_type"] == "image" and data["error_message"] is None
        assert data["aspect_ratio"] == "1:1" and data["prompt"].startswith("Abstract")
        assert data["enqueued_at"] <= data["started_at"] <= data["completed_at"]
        image = image_at(data["result_url"])
        assert (image.format, image.size) == ("PNG", (576, 576))
        assert_drawn(image)


def test_cancel_a_queued_generation(api):
    generations = requests.post(f"{api}/ai/queue", timeout=30, json={
        "model": "flux-1-dev", "prompt": "a slow one", **SLOW, "num_generations": 2}).json()["generations"]
    running, waiting = (g["generation_id"] for g in generations)
    wait_until(lambda: requests.get(f"{api}/ai/queue/{running}", timeout=10).json()["status"] == "processing")
    assert requests.get(f"{api}/ai/queue/{waiting}", timeout=10).json()["status"] == "queued"
    cancelled = requests.delete(f"{api}/ai/queue/{waiting}", timeout=10)
    assert cancelled.json() == {"status": "success", "generation_id": waiting}
    assert requests.get(f"{api}/ai/queue/{waiting}", timeout=10).json()["status"] == "cancelled"
    requests.delete(f"{api}/ai/queue/{running}", timeout=10)  # stops at its next step
    assert poll(api, running, 30)["status"] == "cancelled"


def test_list_filters_by_model_and_status_newest_first(api):
    ids = [g["generation_id"] for g in requests.post(f"{api}/ai/queue", timeout=30, json={
        "model": "flux-1-dev", "prompt": "listed", **QUICK, "num_generations": 2}).json()["generations"]]
    active = requests.get(f"{api}/ai/queue", params={"model": "flux-1-dev"}, timeout=10).json()
    assert active["count"] == len(active["generations"])
    assert all(g["status"] in ("queued", "processing") for g in active["generations"])
    for generation_id in ids:
        poll(api, generation_id)
    done = requests.get(f"{api}/ai/queue", params={"model": "flux-1-dev", "status": "succeeded"}, timeout=10).json()
    listed = [g["generation_id"] for g in done["generations"]]
    assert listed[:2] == ids[::-1]  # newest first
    kontext = requests.get(f"{api}/ai/queue", params={"model": "flux-kontext-dev", "status": "succeeded"},
                           timeout=10).json()
    assert not set(ids) & {g["generation_id"] for g in kontext["generations"]}
    refused = requests.get(f"{api}/ai/queue", params={"status": "done"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "status"


def completion_events(stream):
    """Oxen's SSE reading: each media_generation_completed payload, keep-alive comments skipped."""
    event_name = None
    for line in stream.iter_lines(decode_unicode=True):
        if not line:
            event_name = None
        elif line.startswith("event:"):
            event_name = line[6:].strip()
        elif line.startswith("data:") and event_name == "media_generation_completed":
            yield json.loads(line[5:])


def test_events_deliver_the_completion_with_the_file_url(api):
    # Subscribe before queueing: events are not buffered for later subscribers.
    with requests.get(f"{api}/events", stream=True, timeout=(5, 60)) as stream:
        queued = requests.post(f"{api}/ai/queue", timeout=30, json={
            "model": "flux-1-dev", "prompt": "A cathedral in the clouds", **QUICK})
        generation_id = queued.json()["generations"][0]["generation_id"]
        event = next(event for event in completion_events(stream) if event["generation_id"] == generation_id)
    assert event["status"] == "succeeded" and event["model"] == "flux-1-dev" and event["media_type"] == "image"
    assert image_at(event["url"]).size == (576, 576)


def test_events_stream_says_it_is_alive(api):
    with requests.get(f"{api}/events", stream=True, timeout=(5, 10)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert next(stream.iter_lines(decode_unicode=True)) == ": keep-alive"


@pytest.mark.parametrize("name", ["flux-1-dev", "black-forest-labs/FLUX.1-dev"])
def test_model_schema_has_the_seeds_fields_and_defaults(api, name):
    model = requests.get(f"{api}/ai/models/{name}", timeout=10).json()
    assert model["id"] == "flux-1-dev" and model["endpoint"] == "/images/generate"
    schema = model["json_request_schema"]
    defaults = {field: spec.get("default") for field, spec in schema["properties"].items()}
    assert defaults == {
        "prompt": "A beautiful landscape painting of a serene lake with mountains in the background",
        "negative_prompt": " ", "aspect_ratio": "16:9", "image_size": "optimize_for_quality",
        "num_inference_steps": 30, "guidance": 3, "seed": None, "output_format": "webp", "output_quality": 80,
        "disable_safety_checker": False, "n": 1}
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["aspect_ratio"]["enum"] == ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]
    assert schema["properties"]["output_format"]["enum"] == ["webp", "jpg", "png"]
    steps, guidance = schema["properties"]["num_inference_steps"], schema["properties"]["guidance"]
    assert (steps["minimum"], steps["maximum"], guidance["minimum"], guidance["maximum"]) == (1, 50, 0, 10)


def test_kontext_schema_requires_the_input_image(api):
    model = requests.get(f"{api}/ai/models/flux-kontext-dev", timeout=10).json()
    schema = model["json_request_schema"]
    assert model["endpoint"] == "/images/edit" and schema["required"] == ["prompt", "input_image"]
    assert schema["properties"]["num_inference_steps"].items() >= {"default": 28, "minimum": 4, "maximum": 50}.items()
    assert "match_input_image" in schema["properties"]["aspect_ratio"]["enum"]


@pytest.mark.parametrize(("change", "field", "says"), [
    ({"aspect_ratio": "5:1"}, "aspect_ratio", "aspect_ratio must be one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3"),
    ({"guidance": 12}, "guidance", "guidance must be a number from 0 to 10, got 12"),
    ({"num_inference_steps": 0}, "num_inference_steps", "num_inference_steps must be an integer from 1 to 50"),
    ({"output_format": "gif"}, "output_format", "output_format must be one of webp, jpg, png"),
    ({"num_generations": 5}, "num_generations", "num_generations must be an integer from 1 to 4"),
    ({"n": 2}, "n", "num_generations"),
])
def test_bad_input_is_refused_before_anything_is_queued(api, playground, change, field, says):
    before = job_counts(playground)
    response = requests.post(f"{api}/ai/queue", timeout=10, json={"model": "flux-1-dev", "prompt": "x", **change})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error" and body["error"]["field"] == field and says in body["error"]["message"]
    assert job_counts(playground) == before


def test_sync_routes_refuse_bad_input_naming_the_field(api):
    missing = requests.post(f"{api}/ai/images/edit", timeout=10, json={"model": "flux-kontext-dev", "prompt": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "input_image"
    wrong_route = requests.post(f"{api}/ai/images/generate", timeout=10,
                                json={"model": "flux-kontext-dev", "prompt": "x"})
    assert wrong_route.status_code == 400 and "/api/ai/images/edit" in wrong_route.json()["error"]["message"]
    no_model = requests.post(f"{api}/ai/images/generate", timeout=10, json={"prompt": "x"})
    assert no_model.status_code == 400 and no_model.json()["error"]["field"] == "model"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/ai/images/generate", {"model": "no-such-model", "prompt": "x"}),
    ("post", "/ai/queue", {"model": "flux-1-redux-dev", "prompt": "x"}),
    ("get", "/ai/models/no-such-model", None),
    ("get", "/ai/queue/no-such-generation", None),
    ("delete", "/ai/queue/no-such-generation", None),
])
def test_unknown_models_and_generations_are_404(api, method, path, body):
    response = requests.request(method, api + path, json=body, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "resource_not_found" and response.json()["status"] == "error"


def test_the_docs_show_the_computed_size_table():
    table = size_table()
    assert table in oxen_api.__doc__ and table in (REPO / "README.md").read_text()
