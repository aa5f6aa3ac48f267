"""Hardening: long prompts, time limits, faults inside the pipeline, overload, access control."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import time

import pytest
import requests
import torch
from conftest import (
    EXAMPLE_BIRD,
    FAST,
    call,
    pixels,
    result_images,
    running_server,
    start_app,
    stop,
)
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image


def test_long_prompts_are_truncated_with_a_visible_warning(client, base_url):
    long_prompt = "a beautiful red fox in the snow at dawn with a river " * 60
    result = call(client, "/text_to_image", prompt=long_prompt, **FAST, seed=1)
    warnings = result[2]["warnings"]
    assert any("CLIP tokens; CLIP reads only the first 77" in w for w in warnings), warnings
    assert any("T5 tokens; only the first 512 are used" in w for w in warnings), warnings
    fal = requests.post(base_url + "fal-ai/flux/dev", json={"prompt": long_prompt, "image_size": "square",
                                                            "num_inference_steps": 1}, timeout=60).json()
    assert any("CLIP tokens" in w for w in fal["warnings"])
    assert call(client, "/text_to_image", prompt="a fox", **FAST)[2]["warnings"] == []


@pytest.fixture
def time_limit(playground):
    saved = playground.time_limit_seconds
    yield lambda seconds: setattr(playground, "time_limit_seconds", seconds)
    playground.time_limit_seconds = saved


def test_a_request_over_the_time_limit_is_stopped_and_the_next_one_works(client, time_limit):
    time_limit(0.3)
    started = time.monotonic()
    with pytest.raises(AppError, match="time limit of 0.3 s"):
        call(client, "/text_to_image", prompt="a fox", image_size="square_hd", num_inference_steps=50,
             num_images=4, live_preview=False)
    assert time.monotonic() - started < 8  # four 50-step images would take far longer
    time_limit(0)
    assert result_images(call(client, "/text_to_image", prompt="a fox", **FAST))[0].size == (256, 256)


@pytest.fixture
def failing_transformer(playground, monkeypatch):
    """Make the dev transformer raise `error` on its next forward pass, once."""
    transformer = playground.manager.component("transformer")
    original = transformer.forward

    def arm(error: Exception):
        def fail_once(*args, **kwargs):
            monkeypatch.setattr(transformer, "forward", original)
            raise error

        monkeypatch.setattr(transformer, "forward", fail_once)

    return arm


def test_out_of_memory_is_reported_and_the_next_request_succeeds(client, failing_transformer, base_url):
    failing_transformer(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    with pytest.raises(AppError, match="ran out of memory. Try a smaller image size or fewer images"):
        call(client, "/text_to_image", prompt="a fox", **FAST)
    good = call(client, "/text_to_image", prompt="a fox", **FAST, seed=3)
    assert pixels(result_images(good)[0]).std() > 5
    # The same through a REST API, in its own error shape.
    failing_transformer(torch.OutOfMemoryError("CUDA out of memory"))
    response = requests.post(base_url + "v2/black-forest-labs-flux-1-dev/runsync",
                             json={"input": {"prompt": "a fox", "width": 256, "height": 256}}, timeout=60)
    assert response.status_code == 500 and "ran out of memory" in response.json()["error"]
    assert call(client, "/kontext_edit", image=EXAMPLE_BIRD, prompt="x", **FAST)[2]["mode"] == "kontext_edit"


def test_any_pipeline_failure_is_reported_with_a_request_id(client, failing_transformer):
    failing_transformer(RuntimeError("expected all tensors to be on the same device"))
    with pytest.raises(AppError, match=r"Generation failed \(RuntimeError: expected all tensors.*Request id \w+"):
        call(client, "/text_to_image", prompt="a fox", **FAST)
    assert result_images(call(client, "/text_to_image", prompt="a fox", **FAST))[0].size == (256, 256)


def rss_megabytes(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def small_queue_server(family, tmp_path_factory):
    with running_server(["--max-queue", "4"], tmp_path_factory.mktemp("small-queue")) as served:
        yield served


def burst(users: list[Client], request: dict) -> tuple[int, int]:
    """Every user (one client, one session each) asks at once; returns (served, busy)."""
    jobs = [user.submit(**request, seed=i) for i, user in enumerate(users)]
    served, busy = 0, 0
    for job in jobs:
        try:
            images = result_images(job.result(timeout=180))  # none may hang
            assert images[0].size == (512, 512)
            served += 1
        except Exception as error:  # noqa: BLE001 - the test classifies every outcome
            # Ours from the validator, or gradio's own when its queue check trips first.
            message = str(error)
            assert "The server is busy" in message or "Queue is full! Please try again." in message, repr(error)
            busy += 1
    return served, busy


def test_forty_concurrent_jobs_each_get_images_or_a_clear_busy_error(family, family_root, tmp_path):
    # The server in its own process, so that its memory is measured alone.
    process, url = start_app(["--demo", "--max-queue", "4"], family_root, tmp_path)
    try:
        users = [Client(url, verbose=False) for _ in range(40)]
        # Slow enough (about 0.3 s each) that 40 at once overflow a queue of 4.
        request = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 10, "live_preview": False,
                   "api_name": "/text_to_image"}
        rss = []
        for _ in range(7):
            # One running and four waiting are served (a few more if some finish while the
            # others still arrive); the rest are told to try again.
            served, busy = burst(users, request)
            assert served + busy == 40 and 5 <= served <= 12, (served, busy)
            rss.append(rss_megabytes(process.pid))
        # After the first burst has warmed the caches, memory stays flat. One reading swings by
        # up to 50 MB here (seen with no leak): medians of three, three bursts apart. The leak
        # this guards against (malloc arenas) grew about 24 MB a burst: 70 MB over three.
        early, late = sorted(rss[1:4])[1], sorted(rss[4:7])[1]
        assert late - early < 45, rss
        assert result_images(users[0].predict(**request))[0].size == (512, 512)
    finally:
        stop(process)


def test_rest_requests_beyond_the_queue_are_told_the_server_is_busy(small_queue_server):
    _, _, url = small_queue_server
    body = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 6}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: requests.post(url + "fal-ai/flux/dev", json=body, timeout=180), range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    busy = next(r for r in responses if r.status_code == 503).json()
    assert "The server is busy" in busy["detail"][0]["msg"] and "try again" in busy["detail"][0]["msg"]


@pytest.fixture(scope="module")
def locked_server(family, tmp_path_factory):
    args = ["--auth", "alice:wonderland", "--api-key", "k3y", "--max-upload-mb", "0.01"]
    with running_server(args, tmp_path_factory.mktemp("locked")) as served:
        yield served


def test_login_protects_the_page_and_its_api(locked_server):
    _, _, url = locked_server
    assert "FLUX Playground" not in requests.get(url + "config", timeout=10).text
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's error type for a refused login varies
        Client(url, verbose=False)
    client = Client(url, auth=("alice", "wonderland"), verbose=False)
    assert result_images(call(client, "/text_to_image", prompt="a fox", **FAST))[0].size == (256, 256)


@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Bearer k3y"}, 200), ({"Authorization": "Key k3y"}, 200), ({"X-API-Key": "k3y"}, 200),
])
def test_api_key_guards_the_rest_routes(locked_server, headers, status):
    _, _, url = locked_server
    body = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 1}
    assert requests.post(url + "fal-ai/flux/dev", json=body, headers=headers, timeout=60).status_code == status
    models = requests.get(url + "v1/models", headers=headers, timeout=10)
    assert models.status_code == status
    if status == 401:
        assert "valid API key is required" in models.json()["error"]["message"]


def test_uploads_over_the_limit_are_refused(locked_server):
    _, _, url = locked_server
    data = open(EXAMPLE_BIRD, "rb").read()  # about 20 KB, over the 0.01 MB limit
    response = requests.post(url + "v1/images/edits", headers={"Authorization": "Bearer k3y"},
                             files={"image": ("bird.jpg", data, "image/jpeg")}, data={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and "at most 10485 are accepted" in response.json()["error"]["message"]
    data_uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    response = requests.post(url + "fal-ai/flux-kontext/dev", headers={"Authorization": "Key k3y"},
                             json={"prompt": "x", "image_url": data_uri}, timeout=30)
    assert response.status_code == 422 and "at most 10485 are accepted" in response.json()["detail"][0]["msg"]
    client = Client(url, auth=("alice", "wonderland"), verbose=False)
    with pytest.raises(Exception, match="(?i)file.*(size|large)|413"):
        call(client, "/kontext_edit", image=EXAMPLE_BIRD, prompt="x", **FAST)


def test_no_file_outside_the_outputs_is_served_and_monitoring_is_off(base_url):
    for path in ("gradio_api/file=/etc/passwd", "gradio_api/file=app.py", "results/../app.py",
                 "results/%2e%2e%2fapp.py"):
        response = requests.get(base_url + path, timeout=10)
        assert response.status_code in (400, 403, 404), (path, response.status_code)
        assert "root:" not in response.text and "FLUX Playground: a Gradio" not in response.text
    assert requests.get(base_url + "monitoring", timeout=10).status_code in (403, 404)


def test_a_tiny_png_round_trip(tmp_path):
    Image.new("RGB", (64, 64), "red").save(buffer := io.BytesIO(), format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).size == (64, 64)


def test_a_requests_input_images_are_stored_with_its_results_and_named_in_its_parameters(playground):
    """Inputs as given (before resizing or an outpaint canvas), kept and swept like results."""
    from conftest import EXAMPLE_LAKE, REPO
    from PIL import Image

    from pipelines.modes.parsing import parse_request

    request = parse_request("outpaint", {"image": str(REPO / EXAMPLE_LAKE), "prompt": "a wider lake",
                                         "expand_right": 128, "num_inference_steps": 2})
    result = playground.execute(request)
    inputs = result.info["inputs"]
    assert set(inputs) == {"image"}
    with Image.open(playground.store.path(inputs["image"])) as stored, Image.open(REPO / EXAMPLE_LAKE) as given:
        assert stored.size == given.size == (768, 512)  # the input, not the 896x512 canvas
    entry = playground.store.history(limit=1)[0]
    assert entry["parameters"]["inputs"] == inputs
    text = parse_request("text_to_image", {"prompt": "no inputs", "num_inference_steps": 2})
    assert "inputs" not in playground.execute(text).info
