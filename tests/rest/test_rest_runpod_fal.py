"""RunPod- and fal-shaped requests, posted with `requests` as existing client code posts them."""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests
from conftest import EXAMPLE_BIRD
from PIL import Image

# The seeds' example bodies, verbatim (../shared/seeds/000 and 003).
RUNPOD_DEV_EXAMPLE = {"input": {
    "prompt": "A serene mountain landscape at sunset, golden light filtering through clouds, photorealistic",
    "negative_prompt": "blurry, low quality", "width": 1024, "height": 1024, "num_inference_steps": 28,
    "guidance": 7.5, "seed": 42, "image_format": "png"}}
RUNPOD_KONTEXT_EXAMPLE = {"input": {
    "prompt": "Exact same bluebird, same angle and posture, now perched on a cloud in outer space",
    "image": "https://example.com/bluebird.png", "negative_prompt": "", "seed": -1, "num_inference_steps": 28,
    "guidance": 2, "size": "1024*1024", "output_format": "png", "enable_safety_checker": True}}


def get_image(url: str) -> Image.Image:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def post(base_url: str, path: str, body: dict) -> requests.Response:
    return requests.post(base_url + path.lstrip("/"), json=body, timeout=120)


# --- RunPod ----------------------------------------------------------------------------------------

def test_runpod_dev_example_body_verbatim(base_url):
    response = post(base_url, "v2/black-forest-labs-flux-1-dev/runsync", RUNPOD_DEV_EXAMPLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "COMPLETED" and body["id"].startswith("sync-")
    assert isinstance(body["delayTime"], int) and body["executionTime"] > 0 and body["workerId"]
    assert isinstance(body["output"]["cost"], float)
    image = get_image(body["output"]["image_url"])
    assert image.format == "PNG" and image.size == (1024, 1024)


def test_runpod_same_seed_same_image(base_url):
    body = {"input": {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}}
    urls = [post(base_url, "v2/black-forest-labs-flux-1-dev/runsync", body).json()["output"]["image_url"]
            for _ in range(2)]
    first, second = (get_image(url) for url in urls)
    assert first.format == "JPEG"  # RunPod's default image_format
    assert first.tobytes() == second.tobytes()


def test_runpod_kontext_example_body_verbatim_fails_as_promised_without_network(base_url):
    # example.com cannot be reached from here: the answer is RunPod's FAILED shape with the reason.
    response = post(base_url, "v2/black-forest-labs-flux-1-kontext-dev/runsync", RUNPOD_KONTEXT_EXAMPLE)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "FAILED" and "example.com" in body["error"] and body["error"].startswith(
        "Invalid parameter: image")


def test_runpod_kontext_example_with_a_reachable_image(base_url, image_server, rest_settings):
    rest_settings.fetch.allow_private = True  # the test's image server is on loopback
    body = {"input": {**RUNPOD_KONTEXT_EXAMPLE["input"], "image": f"{image_server}/bluebird.jpg",
                      "num_inference_steps": 2, "size": "768*512"}}
    response = post(base_url, "v2/black-forest-labs-flux-1-kontext-dev/runsync", body)
    assert response.status_code == 200, response.text
    image = get_image(response.json()["output"]["image_url"])
    assert image.format == "PNG" and image.size == (768, 512)


def test_runpod_refuses_loopback_urls_by_default(base_url, image_server):
    body = {"input": {"prompt": "x", "image": f"{image_server}/bluebird.jpg"}}
    response = post(base_url, "v2/black-forest-labs-flux-1-kontext-dev/runsync", body)
    assert response.status_code == 400
    assert "127.0.0.1, a private, loopback or link-local address" in response.json()["error"]


@pytest.mark.parametrize("change, words", [
    ({"width": 1000}, "Invalid parameter: width must be a multiple of 16, got 1000"),
    ({"height": 4096}, "Invalid parameter: height must be an integer from 256 to 2048, got 4096"),
    ({"guidance": 25}, "Invalid parameter: guidance must be a number from 0 to 20, got 25"),
    ({"image_format": "gif"}, "Invalid parameter: image_format must be one of png, jpeg, webp"),
    ({"prompt": ""}, "Invalid parameter: prompt is required"),
])
def test_runpod_errors_are_failed_with_the_reason(base_url, change, words):
    body = {"input": {**RUNPOD_DEV_EXAMPLE["input"], **change}}
    response = post(base_url, "v2/black-forest-labs-flux-1-dev/runsync", body)
    assert response.status_code == 400 and response.json()["status"] == "FAILED"
    assert response.json()["error"].startswith(words), response.json()


def test_runpod_unknown_model_and_malformed_body(base_url):
    assert post(base_url, "v2/stable-diffusion/runsync", RUNPOD_DEV_EXAMPLE).status_code == 404
    response = post(base_url, "v2/black-forest-labs-flux-1-dev/runsync", {"prompt": "no input object"})
    assert response.status_code == 400 and response.json()["status"] == "FAILED"
    assert "input" in response.json()["error"]


def wait_for(base_url: str, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = requests.get(f"{base_url}v2/black-forest-labs-flux-1-dev/status/{job_id}", timeout=10).json()
        if state["status"] in statuses:
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {state}")


def test_runpod_async_jobs_queue_complete_and_cancel(base_url):
    slow = {"input": {"prompt": "a fox", "num_inference_steps": 50, "seed": 1}}  # 1024x1024
    quick = {"input": {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1}}
    running = post(base_url, "v2/black-forest-labs-flux-1-dev/run", slow).json()
    queued = post(base_url, "v2/black-forest-labs-flux-1-dev/run", quick).json()
    kept = post(base_url, "v2/black-forest-labs-flux-1-dev/run", quick).json()
    assert running["status"] == queued["status"] == "IN_QUEUE"

    wait_for(base_url, running["id"], {"IN_PROGRESS"})
    cancelled = requests.post(f"{base_url}v2/black-forest-labs-flux-1-dev/cancel/{queued['id']}", timeout=10).json()
    assert cancelled["status"] == "CANCELLED"
    requests.post(f"{base_url}v2/black-forest-labs-flux-1-dev/cancel/{running['id']}", timeout=10)
    stopped = wait_for(base_url, running["id"], {"CANCELLED", "COMPLETED", "FAILED"})
    assert stopped["status"] == "CANCELLED" and "output" not in stopped

    done = wait_for(base_url, kept["id"], {"COMPLETED", "FAILED", "CANCELLED"})
    assert done["status"] == "COMPLETED" and done["delayTime"] > 0
    assert get_image(done["output"]["image_url"]).size == (256, 256)
    missing = requests.get(f"{base_url}v2/black-forest-labs-flux-1-dev/status/no-such-job", timeout=10)
    assert missing.status_code == 404


# --- fal -------------------------------------------------------------------------------------------

def test_fal_dev_returns_fal_shaped_images(base_url):
    response = post(base_url, "fal-ai/flux/dev", {"prompt": "a girl walking through a field", "image_size": "square",
                                                  "num_images": 2, "seed": 8, "num_inference_steps": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 8 and body["prompt"] == "a girl walking through a field"
    assert body["has_nsfw_concepts"] == [False, False] and body["timings"]["inference"] > 0
    for item in body["images"]:
        assert (item["width"], item["height"], item["content_type"]) == (512, 512, "image/jpeg")
        assert get_image(item["url"]).size == (512, 512)


def test_fal_sync_mode_returns_data_uris_and_custom_sizes(base_url):
    response = post(base_url, "fal-ai/flux/dev", {"prompt": "a fox", "image_size": {"width": 320, "height": 256},
                                                  "sync_mode": True, "output_format": "png",
                                                  "num_inference_steps": 2})
    url = response.json()["images"][0]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (320, 256)


def test_fal_kontext_and_redux_take_data_uri_images(base_url):
    data_uri = "data:image/jpeg;base64," + base64.b64encode(open(EXAMPLE_BIRD, "rb").read()).decode()
    for path in ("fal-ai/flux-kontext/dev", "fal-ai/flux/dev/redux", "fal-ai/flux/dev/image-to-image"):
        response = post(base_url, path, {"prompt": "in space", "image_url": data_uri, "num_inference_steps": 2,
                                         "image_size": {"width": 256, "height": 256}})
        assert response.status_code == 200, (path, response.text)
        assert get_image(response.json()["images"][0]["url"]).size == (256, 256)


@pytest.mark.parametrize("body, field, words", [
    ({"prompt": "x", "num_images": 5}, "num_images", "num_images must be an integer from 1 to 4, got 5"),
    ({"prompt": "x", "image_size": "huge"}, "image_size", "image_size must be one of"),
    ({"prompt": "x", "acceleration": "ludicrous"}, "acceleration", "Input should be 'none', 'regular' or 'high'"),
    ({"prompt": ""}, "prompt", "prompt is required"),
])
def test_fal_errors_are_422_with_the_field(base_url, body, field, words):
    response = post(base_url, "fal-ai/flux/dev", body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == field and words in detail["msg"], detail


def test_fal_image_modes_need_an_image(base_url):
    response = post(base_url, "fal-ai/flux-kontext/dev", {"prompt": "x"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_safety_checker_flags_and_replaces_and_can_be_switched_off(base_url, safety_threshold):
    safety_threshold(0.0)  # every image scores at least 0: all are flagged
    body = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 2, "seed": 4, "output_format": "png"}
    flagged = post(base_url, "fal-ai/flux/dev", body).json()
    assert flagged["has_nsfw_concepts"] == [True]
    assert get_image(flagged["images"][0]["url"]).getextrema() == ((0, 0), (0, 0), (0, 0))  # black
    unchecked = post(base_url, "fal-ai/flux/dev", {**body, "enable_safety_checker": False}).json()
    assert unchecked["has_nsfw_concepts"] == [False]
    assert get_image(unchecked["images"][0]["url"]).getextrema() != ((0, 0), (0, 0), (0, 0))


def test_results_expire_after_the_retention(base_url, playground):
    body = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 1}
    url = post(base_url, "fal-ai/flux/dev", body).json()["images"][0]["url"]
    assert requests.get(url, timeout=10).status_code == 200
    playground.store.sweep(now=time.time() + playground.store.retention_seconds + 1)
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.get(base_url + "results/..%2F..%2Fetc%2Fpasswd", timeout=10).status_code == 404
