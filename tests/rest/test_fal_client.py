"""fal's own Python client (`fal_client`), unchanged but for its two host constants, pointed at
the app: run, subscribe with logs, submit/status/get, status and result by id, cancel, stream,
the status stream, and its errors."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import requests
from conftest import EXAMPLE_BIRD, image_at, pixels, wait_until
from httpx_sse import connect_sse
from PIL import Image

from pipelines.jobs.store import JobStore

APP = "fal-ai/flux/dev"
QUICK = {"prompt": "a fox", "image_size": {"width": 256, "height": 256}, "num_inference_steps": 2, "seed": 7}
# Long enough to be caught running and cancelled: seconds on the demo model.
SLOW = {"prompt": "a fox", "image_size": {"width": 768, "height": 768}, "num_inference_steps": 50, "seed": 8}
# Long enough for a poll to see it running, with previews at steps 4 and 8.
TWELVE_STEPS = {**QUICK, "image_size": {"width": 512, "height": 512}, "num_inference_steps": 12}


@pytest.fixture
def fal(base_url, monkeypatch):
    import fal_client

    # The client's own settings: a key (any), and its two hosts pointed at this server.
    monkeypatch.setenv("FAL_KEY", "unused")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", base_url)
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", base_url + "queue/")
    return fal_client


@pytest.fixture
def fal_jobs(playground):
    """The fal jobs of the running app by state, read from its job store."""
    store = JobStore(playground.outputs_dir)
    yield lambda: store.counts("fal")
    store.close()




def image_of(data_uri: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1])))
    image.load()
    return image




def collapsed(words: list[str]) -> list[str]:
    """Each run of the same word once: the changes."""
    return [word for index, word in enumerate(words) if index == 0 or words[index - 1] != word]


def test_run_answers_with_the_sync_response(fal):
    result = fal.run(APP, {**QUICK, "output_format": "png"})
    assert result["seed"] == 7 and result["prompt"] == "a fox" and result["has_nsfw_concepts"] == [False]
    assert result["images"][0] == {**result["images"][0], "width": 256, "height": 256, "content_type": "image/png"}
    image = image_at(result["images"][0]["url"])
    assert image.format == "PNG" and image.size == (256, 256)


def test_subscribe_reports_queued_then_in_progress_then_completed_with_logs(fal):
    blocker = fal.submit(APP, SLOW)
    wait_until(lambda: isinstance(blocker.status(), fal.InProgress))
    updates = []

    def on_queue_update(status):
        if not updates:  # it waits behind the blocker: stop that one now
            fal.cancel(APP, blocker.request_id)
        updates.append(status)

    body = {**TWELVE_STEPS, "num_images": 2}
    result = fal.subscribe(APP, body, with_logs=True, on_queue_update=on_queue_update, interval=0.02)
    assert collapsed([type(update).__name__ for update in updates]) == ["Queued", "InProgress", "Completed"]
    assert updates[0].position == 0
    assert any(update.logs for update in updates if isinstance(update, fal.InProgress))
    done = updates[-1]
    assert [line["message"] for line in done.logs] == [
        f"image {image} of 2 · step {step} of 12" for image in (1, 2) for step in range(1, 13)]
    assert all(line["level"] == "INFO" and line["timestamp"] for line in done.logs)
    assert done.metrics["inference_time"] > 0 and done.error is None
    assert [image_at(item["url"]).size for item in result["images"]] == [(512, 512), (512, 512)]
    assert fal.status(APP, blocker.request_id).error_type == "client_cancelled"


def test_submit_then_status_then_get(fal):
    handle = fal.submit(APP, QUICK)
    assert isinstance(handle.status(), fal.Queued | fal.InProgress | fal.Completed)
    result = handle.get()
    status = handle.status(with_logs=True)
    assert isinstance(status, fal.Completed) and status.metrics["inference_time"] > 0 and len(status.logs) == 2
    assert handle.status().logs is None  # only when asked for
    assert fal.result(APP, handle.request_id) == result  # the stored result, rendered again alike
    # The same seed through the queue and the sync route: the same image.
    queued, direct = image_at(result["images"][0]["url"]), image_at(fal.run(APP, QUICK)["images"][0]["url"])
    assert queued.size == (256, 256) and (pixels(queued) == pixels(direct)).all()


def test_status_and_result_by_id_for_a_sub_path_app(fal):
    app = "fal-ai/flux/dev/image-to-image"
    bird = fal.encode_image(Image.open(EXAMPLE_BIRD))  # a data URI
    handle = fal.submit(app, {"prompt": "a bluebird in space", "image_url": bird, "num_inference_steps": 4,
                              "strength": 0.5})
    # fal's request URLs keep the owner and the alias only.
    assert "/queue/fal-ai/flux/requests/" in handle.status_url
    wait_until(lambda: isinstance(fal.status(app, handle.request_id), fal.Completed))
    result = fal.result(app, handle.request_id)
    assert image_at(result["images"][0]["url"]).size == (640, 640)  # image_size: match_input


def test_a_queued_kontext_edit_fetches_its_url_and_returns_data_uris_in_sync_mode(fal, image_server,
                                                                                 rest_settings):
    rest_settings.fetch.allow_private = True  # the test's image server is on loopback
    result = fal.subscribe("fal-ai/flux-kontext/dev", {
        "prompt": "the lake at night", "image_url": f"{image_server}/lake_sunset.jpg", "num_inference_steps": 2,
        "image_size": {"width": 384, "height": 256}, "sync_mode": True, "output_format": "png"})
    url = result["images"][0]["url"]
    assert url.startswith("data:image/png;base64,") and image_of(url).size == (384, 256)


def test_cancel_a_queued_and_a_running_job(fal, base_url):
    running = fal.submit(APP, SLOW)
    wait_until(lambda: isinstance(running.status(), fal.InProgress))
    submitted = requests.post(f"{base_url}queue/{APP}", json=QUICK, timeout=10).json()
    assert submitted["status"] == "IN_QUEUE" and submitted["queue_position"] == 0
    queued = fal.sync_client.get_handle(APP, submitted["request_id"])
    assert (queued.response_url, queued.status_url, queued.cancel_url) == (
        submitted["response_url"], submitted["status_url"], submitted["cancel_url"])  # as the client builds them
    assert queued.status() == fal.Queued(position=0)
    assert requests.get(running.status_url, timeout=10).status_code == 202  # fal's, until COMPLETED
    not_ready = requests.get(running.response_url, timeout=10)
    assert not_ready.status_code == 400 and "still in progress" in not_ready.json()["detail"]

    queued.cancel()
    assert queued.status().error_type == "client_cancelled"  # at once
    with pytest.raises(fal.FalClientHTTPError) as cancelled:
        queued.get()
    assert cancelled.value.status_code == 499 and cancelled.value.error_type == "client_cancelled"

    running.cancel()
    wait_until(lambda: isinstance(running.status(), fal.Completed), 20)
    assert running.status().error_type == "client_cancelled"  # stopped before it finished
    with pytest.raises(fal.FalClientHTTPError) as again:
        running.cancel()
    assert again.value.status_code == 400 and again.value.response.json() == {"status": "ALREADY_COMPLETED"}
    assert fal.run(APP, QUICK)["seed"] == 7  # the accelerator is free again


def test_stream_yields_previews_then_the_sync_response(fal):
    events = list(fal.stream(APP, TWELVE_STEPS))
    previews, final = events[:-1], events[-1]
    # 12 steps, a preview every 4 (never on the last).
    assert [(event["step"], event["steps"]) for event in previews] == [(4, 12), (8, 12)]
    for event in previews:
        item = event["images"][0]
        assert item["content_type"] == "image/jpeg" and item["url"].startswith("data:image/jpeg;base64,")
        assert image_of(item["url"]).size == (item["width"], item["height"]) == (512, 512)
    direct = fal.run(APP, TWELVE_STEPS)
    assert final.keys() == direct.keys() and final["seed"] == 7
    streamed, ran = image_at(final["images"][0]["url"]), image_at(direct["images"][0]["url"])
    assert streamed.size == (512, 512) and (pixels(streamed) == pixels(ran)).all()


def test_a_stream_left_by_its_client_is_cancelled(base_url, playground, fal_jobs):
    before = fal_jobs()
    with httpx.Client(timeout=60) as client, connect_sse(client, "POST", base_url + "fal-ai/flux/dev/stream",
                                                         json=SLOW) as events:
        first = next(events.iter_sse()).json()
        assert first["step"] == 4  # the first preview; then the client goes away
    wait_until(lambda: fal_jobs()["cancelled"] == before["cancelled"] + 1, 20)
    assert fal_jobs()["completed"] == before["completed"]  # stopped, not run to the end
    assert playground.queue.counts()["running"] == 0


def test_status_stream_sends_each_change_until_completed(fal):
    blocker = fal.submit(APP, SLOW)
    wait_until(lambda: isinstance(blocker.status(), fal.InProgress))
    handle = fal.submit(APP, TWELVE_STEPS)
    statuses = []
    with httpx.Client(timeout=60) as client, connect_sse(client, "GET", handle.status_url + "/stream",
                                                         params={"logs": 1}) as events:
        assert events.response.headers["content-type"].startswith("text/event-stream")
        for event in events.iter_sse():
            if not statuses:
                fal.cancel(APP, blocker.request_id)
            statuses.append(event.json())
    assert collapsed([status["status"] for status in statuses]) == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert all(earlier != later for earlier, later in zip(statuses, statuses[1:], strict=False))  # changes only
    assert len(statuses[-1]["logs"]) == 12 and statuses[-1]["metrics"]["inference_time"] > 0
    assert all(status["response_url"] == handle.response_url for status in statuses)


def test_bad_input_is_refused_in_fals_shape_before_anything_is_queued(fal, base_url, playground, fal_jobs):
    before = fal_jobs()
    with pytest.raises(fal.FalClientHTTPError) as invalid:
        fal.submit(APP, {**QUICK, "num_inference_steps": 500, "image_size": "huge"})
    assert invalid.value.status_code == 422
    assert [problem["loc"] for problem in invalid.value.message] == [["body", "num_inference_steps"],
                                                                     ["body", "image_size"]]
    assert "num_inference_steps must be an integer from 1 to 50, got 500" in invalid.value.message[0]["msg"]
    with pytest.raises(fal.FalClientHTTPError) as no_image:
        fal.submit("fal-ai/flux/dev/image-to-image", {"prompt": "x"})
    assert no_image.value.message[0]["loc"] == ["body", "image_url"]
    streamed = requests.post(base_url + "fal-ai/flux/dev/stream", json={"prompt": ""}, timeout=10)
    assert streamed.status_code == 422 and streamed.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert fal_jobs() == before and playground.queue.counts() == {"waiting": 0, "running": 0}


def test_every_fal_app_has_a_queue_and_a_stream_route(base_url):
    from rest.fal_api import ROUTES

    for path in ROUTES:
        for route in (f"queue/fal-ai{path}", f"fal-ai{path}/stream"):
            response = requests.post(base_url + route, json={"prompt": ""}, timeout=10)
            assert response.status_code == 422, (route, response.text)  # validated, not unknown
            assert response.json()["detail"][0]["loc"][-1] in ("prompt", "image_url")  # what each app needs first


def test_unknown_apps_and_requests_are_404(fal):
    for call in (lambda: fal.submit("fal-ai/flux-pro", QUICK), lambda: fal.run("fal-ai/flux-pro", QUICK)):
        with pytest.raises(fal.FalClientHTTPError) as unknown:
            call()
        assert unknown.value.status_code == 404 and "fal-ai/flux-pro is not served here" in unknown.value.message
    done = fal.submit(APP, QUICK)
    done.get()
    for call in (lambda: fal.status(APP, "no-such-request"), lambda: fal.result(APP, "no-such-request"),
                 lambda: fal.cancel(APP, "no-such-request"),
                 lambda: fal.status("fal-ai/flux-lora", done.request_id)):  # another app's alias
        with pytest.raises(fal.FalClientHTTPError) as missing:
            call()
        assert missing.value.status_code == 404 and "No request" in missing.value.message
