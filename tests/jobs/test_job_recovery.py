"""Killed and started again on the same outputs folder, the server finishes every async job it
had accepted, and every finished job keeps its status and result."""

from __future__ import annotations

import io
import signal
import time

import requests
from conftest import start_app, stop
from PIL import Image

RUNPOD = "v2/black-forest-labs-flux-1-dev"
SLOW = {"prompt": "a fox", "width": 512, "height": 512, "num_inference_steps": 30, "seed": 11}


def quick(seed: int) -> dict:
    return {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": seed}


def runpod_status(url: str, job_id: str) -> dict:
    return requests.get(f"{url}{RUNPOD}/status/{job_id}", timeout=30).json()


def wait_for(condition, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def result_id(url: str) -> str:
    return url.rsplit("/results/", 1)[1]


def image_at(url: str) -> Image.Image:
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return Image.open(io.BytesIO(response.content))


def test_sigkill_then_restart_finishes_every_job_and_keeps_the_finished(family, family_root, tmp_path):
    process, url = start_app(["--demo"], family_root, tmp_path)
    try:
        done = requests.post(f"{url}{RUNPOD}/runsync", json={"input": quick(1)}, timeout=120).json()
        assert done["status"] == "COMPLETED"
        running = requests.post(f"{url}{RUNPOD}/run", json={"input": SLOW}, timeout=30).json()["id"]
        queued = [requests.post(f"{url}{RUNPOD}/run", json={"input": quick(seed)}, timeout=30).json()["id"]
                  for seed in (2, 3, 4)]
        wait_for(lambda: runpod_status(url, running)["status"] == "IN_PROGRESS")
        assert all(runpod_status(url, job)["status"] == "IN_QUEUE" for job in queued)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    process, url = start_app(["--demo"], family_root, tmp_path)  # the same outputs folder
    try:
        kept = runpod_status(url, done["id"])
        # The same result (served from the new port).
        assert kept["status"] == "COMPLETED" and result_id(kept["output"]["image_url"]) == result_id(done["output"]["image_url"])
        assert kept["delayTime"] == done["delayTime"]
        assert image_at(kept["output"]["image_url"]).size == (256, 256)
        for job, seed, size in [(running, 11, (512, 512)), *((job, seed, (256, 256)) for job, seed in zip(queued, (2, 3, 4)))]:
            state = wait_for(lambda job=job: (s := runpod_status(url, job))["status"] in ("COMPLETED", "FAILED") and s)
            assert state["status"] == "COMPLETED", state
            assert state["output"]["seed"] == seed and image_at(state["output"]["image_url"]).size == size
        health = requests.get(f"{url}{RUNPOD}/health", timeout=30).json()
        assert health["jobs"]["completed"] == 5 and health["jobs"]["retried"] == 1  # the one that was running
    finally:
        stop(process)
