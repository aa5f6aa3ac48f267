"""RunPod's own Python SDK (`runpod`), unchanged, pointed at the app: run_sync, run, status,
output, stream, cancel, health and purge_queue."""

from __future__ import annotations


import pytest
import requests
from conftest import image_at, wait_until

ENDPOINT = "black-forest-labs-flux-1-dev"
QUICK = {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 7}
SLOW = {"prompt": "a fox", "width": 512, "height": 512, "num_inference_steps": 40, "seed": 8}


@pytest.fixture
def endpoint(base_url, monkeypatch):
    import runpod

    # The SDK's own settings: a key, and its base URL pointed at this server.
    monkeypatch.setattr(runpod, "api_key", "unused")
    monkeypatch.setattr(runpod, "endpoint_url_base", base_url + "v2")
    return runpod.Endpoint(ENDPOINT)






def test_run_sync_returns_the_output(endpoint):
    output = endpoint.run_sync({"input": {**QUICK, "image_format": "png"}}, timeout=120)
    image = image_at(output["image_url"])
    assert image.format == "PNG" and image.size == (256, 256) and output["seed"] == 7 and output["cost"] == 0.0


def test_run_then_status_then_output(endpoint):
    job = endpoint.run(QUICK)  # the SDK wraps a bare input in {"input": ...}
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = job.output(timeout=120)
    assert job.status() == "COMPLETED"
    assert image_at(output["image_url"]).size == (256, 256)


def test_stream_yields_each_preview_then_the_result(endpoint):
    job = endpoint.run({**QUICK, "width": 512, "height": 512, "num_inference_steps": 12})
    chunks = list(job.stream())  # polls /stream/{id} until the job is COMPLETED
    previews, final = chunks[:-1], chunks[-1]
    # 12 steps, a preview every 4 (never on the last): steps 4 and 8, each handed out once.
    assert [(chunk["step"], chunk["steps"]) for chunk in previews] == [(4, 12), (8, 12)]
    assert all(chunk["preview"] and chunk["image_url"].startswith("data:image/jpeg;base64,") for chunk in previews)
    assert image_at(final["image_url"]).size == (512, 512) and final["seed"] == 7


def test_cancel_stops_a_running_job_and_ends_its_stream(endpoint):
    job = endpoint.run(SLOW)
    wait_until(lambda: job.status() == "IN_PROGRESS")
    job.cancel()
    wait_until(lambda: job._fetch_job()["status"] == "CANCELLED", 10)
    assert list(job.stream()) == []  # ends, though the SDK stops only at COMPLETED, FAILED or TIMED_OUT
    assert endpoint.run_sync(QUICK, timeout=60)["seed"] == 7  # the accelerator is free again


def test_health_and_purge_queue(endpoint):
    running = endpoint.run(SLOW)
    waiting = [endpoint.run({**SLOW, "seed": seed}) for seed in (1, 2, 3)]
    wait_until(lambda: running.status() == "IN_PROGRESS")
    health = endpoint.health()
    assert health["jobs"]["inQueue"] >= 3 and health["jobs"]["inProgress"] == 1
    assert health["workers"] == {**health["workers"], "running": 1, "idle": 0}
    assert endpoint.purge_queue() == {"removed": 3, "status": "completed"}
    assert [job.status() for job in waiting] == ["CANCELLED"] * 3
    running.cancel()
    wait_until(lambda: running._fetch_job()["status"] == "CANCELLED", 10)
    health = endpoint.health()
    assert health["jobs"]["inQueue"] == 0 and health["workers"]["idle"] == 1


def test_unknown_endpoint_and_bad_input_in_runpods_shape(endpoint, base_url):
    import runpod

    with pytest.raises(requests.HTTPError) as refused:
        runpod.Endpoint("no-such-model").run(QUICK)
    assert refused.value.response.status_code == 404 and refused.value.response.json()["status"] == "FAILED"
    with pytest.raises(requests.HTTPError) as invalid:
        endpoint.run({**QUICK, "num_inference_steps": 500})
    body = invalid.value.response.json()
    assert invalid.value.response.status_code == 400 and body["error"].startswith("Invalid parameter: num_inference_steps")
    assert endpoint.health()["jobs"]["inQueue"] == 0  # nothing was queued
