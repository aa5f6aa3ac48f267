"""Killed and started again on the same outputs folder, the server finishes every async job it
had accepted, from every async API, and every finished job keeps its status and result.

Each API is driven through its own official client: runpod, fal-client (its two hosts pointed
at the app), replicate."""

from __future__ import annotations

import signal

import fal_client
import replicate
import runpod
from conftest import image_at, start_app, stop, wait_until

RUNPOD_ENDPOINT = "black-forest-labs-flux-1-dev"
FAL_APP = "fal-ai/flux/dev"
REPLICATE_MODEL = "black-forest-labs/flux-dev"
SLOW = {"prompt": "a fox", "width": 512, "height": 512, "num_inference_steps": 30, "seed": 11}


def quick(seed: int) -> dict:
    return {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": seed}


def fal_quick(seed: int) -> dict:
    return {"prompt": "a fox", "image_size": {"width": 256, "height": 256}, "num_inference_steps": 2, "seed": seed}


def replicate_quick(seed: int) -> dict:
    return {"prompt": "a fox", "megapixels": "0.25", "aspect_ratio": "1:1", "num_inference_steps": 2, "seed": seed,
            "output_format": "png"}


class Clients:
    """The three official clients, pointed at the app at `url` (its port changes on restart)."""

    def __init__(self, url: str, monkeypatch):
        monkeypatch.setattr(runpod, "api_key", "unused")
        monkeypatch.setattr(runpod, "endpoint_url_base", url + "v2")
        monkeypatch.setenv("FAL_KEY", "unused")
        monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", url)
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", url + "queue/")
        self.runpod = runpod.Endpoint(RUNPOD_ENDPOINT)
        self.replicate = replicate.Client(api_token="unused", base_url=url.rstrip("/"))

    def runpod_state(self, job_id: str) -> dict:
        return runpod.endpoint.runner.Job(RUNPOD_ENDPOINT, job_id, self.runpod.rp_client)._fetch_job()




def result_id(url: str) -> str:
    return url.rsplit("/results/", 1)[1]




def test_sigkill_then_restart_finishes_every_job_and_keeps_the_finished(family, family_root, tmp_path, monkeypatch):
    process, url = start_app(["--demo"], family_root, tmp_path)
    try:
        clients = Clients(url, monkeypatch)
        # Finished before the kill, one per API.
        runpod_done = clients.runpod.run_sync({"input": quick(1)}, timeout=120)
        runpod_done_id = clients.runpod.run(quick(1))  # a /run job, to read it back by its id
        runpod_done_id.output(timeout=120)
        fal_done = fal_client.submit(FAL_APP, fal_quick(2))
        fal_done_result = fal_done.get()
        replicate_done = clients.replicate.predictions.create(model=REPLICATE_MODEL, input=replicate_quick(3))
        replicate_done.wait()
        # Then one running and, behind it, one waiting per API.
        running = clients.runpod.run(SLOW)
        wait_until(lambda: running.status() == "IN_PROGRESS")
        runpod_waiting = clients.runpod.run(quick(4))
        fal_waiting = fal_client.submit(FAL_APP, fal_quick(5))
        replicate_waiting = clients.replicate.predictions.create(model=REPLICATE_MODEL, input=replicate_quick(6))
        assert runpod_waiting.status() == "IN_QUEUE"
        assert isinstance(fal_waiting.status(), fal_client.Queued)
        assert clients.replicate.predictions.get(replicate_waiting.id).status == "starting"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    process, url = start_app(["--demo"], family_root, tmp_path)  # the same outputs folder
    try:
        clients = Clients(url, monkeypatch)
        # What had finished is as it was (its images served by the new process).
        kept = clients.runpod_state(runpod_done_id.job_id)
        assert kept["status"] == "COMPLETED" and image_at(kept["output"]["image_url"]).size == (256, 256)
        fal_kept = fal_client.result(FAL_APP, fal_done.request_id)
        assert [result_id(image["url"]) for image in fal_kept["images"]] == \
            [result_id(image["url"]) for image in fal_done_result["images"]]
        replicate_kept = clients.replicate.predictions.get(replicate_done.id)
        assert replicate_kept.status == "succeeded"
        assert [result_id(u) for u in replicate_kept.output] == [result_id(u) for u in replicate_done.output]
        assert replicate_kept.completed_at == replicate_done.completed_at
        assert runpod_done["seed"] == 1

        # What was running or waiting runs now, with the seed it was given.
        for job, seed, size in [(running.job_id, 11, (512, 512)), (runpod_waiting.job_id, 4, (256, 256))]:
            state = wait_until(lambda job=job: (s := clients.runpod_state(job))["status"] in ("COMPLETED", "FAILED") and s)
            assert state["status"] == "COMPLETED" and state["output"]["seed"] == seed, state
            assert image_at(state["output"]["image_url"]).size == size
        fal_result = fal_client.result(FAL_APP, fal_waiting.request_id)  # polls until COMPLETED
        assert fal_result["seed"] == 5 and image_at(fal_result["images"][0]["url"]).size == (256, 256)
        prediction = clients.replicate.predictions.get(replicate_waiting.id)
        prediction.wait()
        assert prediction.status == "succeeded", prediction.error
        assert image_at(prediction.output[0]).size == (512, 512)
        assert "Using seed: 6" in prediction.logs
        health = clients.runpod.health()
        assert health["jobs"]["retried"] == 1  # the one that was running started over
    finally:
        stop(process)

