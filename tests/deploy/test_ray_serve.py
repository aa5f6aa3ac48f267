"""The app on Ray Serve (deploy/serve_app.py): a local Ray, two CPU workers on the demo family,
the ingress serving the same routes. Requests go in through RunPod's routes, gradio_client and
the openai SDK."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
import requests
from conftest import REPO, free_port, result_images, running_server, wait_until
from PIL import Image
from ray import serve

RUNSYNC = "v2/black-forest-labs-flux-1-dev/runsync"
SMALL = {"prompt": "a fox in the snow", "width": 256, "height": 256, "num_inference_steps": 2,
         "image_format": "png"}
SLOW = {**SMALL, "width": 512, "height": 512, "num_inference_steps": 20}  # seconds: long enough to be killed in


def test_app_does_not_import_ray():
    script = "import app, sys; assert 'ray' not in sys.modules, 'app imports ray'"
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


def test_the_ingress_describes_the_real_models_without_loading_them(monkeypatch):
    """With a runner (on a node without a GPU), the ingress neither loads FLUX.1-dev nor falls
    back to the demo family: its labels and capabilities are the workers' models'."""
    import app
    from pipelines.models import startup

    class Plan:
        residency, fits, components = "resident", True, ()

        def table(self) -> str:
            return ""

    class Manager:
        def __init__(self, sources, placement, **options):
            self.sources = sources

        def preload(self):
            raise AssertionError("the ingress loaded the models")

    monkeypatch.setattr(startup, "plan_memory", lambda *args, **kwargs: Plan())
    monkeypatch.setattr(startup, "PipelineManager", Manager)
    args = app.parse_args(["--device", "auto", "--dev-model", "black-forest-labs/FLUX.1-dev", "--no-demo-fallback"])
    manager, demo_reason, _ = startup.start_manager(args, load=False)
    assert demo_reason is None and not manager.sources.demo
    assert manager.sources.dev == "black-forest-labs/FLUX.1-dev"


@pytest.fixture(scope="module")
def ray_app(family, tmp_path_factory):
    """The base URL of `build_app` served by a local Ray with two workers."""
    from deploy.serve_app import build_app

    outputs = tmp_path_factory.mktemp("ray-outputs")
    env = {name: os.environ[name] for name in ("FLUX_PLAYGROUND_DEMO_MODELS", "HF_HUB_OFFLINE") if name in os.environ}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**env, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    flags = f"--demo --outputs-dir {outputs} --lora-dir {outputs / 'loras'}"
    serve.run(build_app({"flags": flags, "workers": 2}), name="flux", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        serve.shutdown()
        ray.shutdown()


def run_sync(base_url: str, **fields) -> dict:
    response = requests.post(base_url + RUNSYNC, json={"input": {**SMALL, **fields}}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "COMPLETED", body
    return body


def image_and_parameters(url: str) -> tuple[Image.Image, dict]:
    from pipelines.outputs.metadata import read_parameters

    response = requests.get(url, timeout=30)
    response.raise_for_status()
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image, read_parameters(response.content)


@functools.cache
def status_client(base_url: str):
    from gradio_client import Client

    return Client(base_url, verbose=False)


def ray_status(base_url: str) -> dict:
    return status_client(base_url).predict(api_name="/status")["workers"]


def single_process_image(tmp_path: Path, seed: int) -> Image.Image:
    """The same RunPod request to the app as `python app.py` serves it (in this process), on
    one thread as a worker with num_cpus=1 (Ray sets its OMP_NUM_THREADS): another thread
    count sums in another order, a step of 1 in a few pixels."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with running_server([], tmp_path) as (_, _, url):
            return image_and_parameters(run_sync(url, seed=seed)["output"]["image_url"])[0]
    finally:
        torch.set_num_threads(threads)


def via_runpod(base_url: str, seed: int) -> tuple[Image.Image, dict]:
    return image_and_parameters(run_sync(base_url, seed=seed)["output"]["image_url"])


def via_gradio_client(base_url: str, seed: int) -> tuple[Image.Image, dict]:
    from gradio_client import Client

    result = Client(base_url, verbose=False).predict(prompt=SMALL["prompt"], width=256, height=256,
                                                     num_inference_steps=2, seed=seed, api_name="/text_to_image")
    return result_images(result)[0], result[2]


def via_openai(base_url: str, seed: int) -> tuple[Image.Image, dict]:
    from openai import OpenAI

    image = OpenAI(base_url=base_url + "v1", api_key="unused").images.generate(
        model="flux.1-dev", prompt=SMALL["prompt"], size="256x256",
        extra_body={"seed": seed, "num_inference_steps": 2, "output_format": "png"})
    return image_and_parameters(image.data[0].url)


def test_requests_from_every_way_in_spread_over_both_workers_with_the_single_process_images(ray_app, tmp_path):
    calls = [(via_runpod, 1), (via_runpod, 2), (via_gradio_client, 3), (via_openai, 4)]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(lambda call: call[0](ray_app, call[1]), calls))
    workers = {parameters["timings"]["worker"] for _, parameters in results}
    assert len(workers) == 2, workers
    assert [parameters["seeds"][0] for _, parameters in results] == [1, 2, 3, 4]
    assert all(image.size == (256, 256) for image, _ in results)
    reference = single_process_image(tmp_path, 1)
    assert results[0][0].convert("RGB").tobytes() == reference.convert("RGB").tobytes()
    status = ray_status(ray_app)
    assert set(status["requests_served"]) == workers and sum(status["requests_served"].values()) == 4
    assert status["replicas"].get("RUNNING") == 2


def test_a_killed_worker_loses_no_request_and_comes_back(ray_app):
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(run_sync, ray_app, **SLOW, seed=seed) for seed in (7, 8)]
        wait_until(lambda: ray_status(ray_app)["running"] == 2, seconds=60)  # both workers busy
        killed = worker_actor_names()[0]
        ray.kill(ray.get_actor(killed, namespace="serve"))
        bodies = [answer.result(timeout=300) for answer in answers]
    assert all(body["output"]["image_url"] for body in bodies)
    status = ray_status(ray_app)
    assert status["retries"] >= 1
    # Serve starts a replica in its place.
    wait_until(lambda: len(names := worker_actor_names()) == 2 and killed not in names, seconds=120)
    wait_until(lambda: ray_status(ray_app)["replicas"] == {"RUNNING": 2}, seconds=120)


def worker_actor_names() -> list[str]:
    """The live FluxWorker replicas' actor names."""
    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if "FluxWorker" in actor["name"]]


class FakeWorkers:
    """A DeploymentHandle stand-in whose streams play back `outcomes` in turn: an exception
    to raise, or a list of events."""

    def __init__(self, outcomes: list):
        self.outcomes = outcomes
        self.generate = self

    def options(self, stream: bool):
        return self

    def remote(self, request, request_id):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        yield from outcome


def test_the_runner_sends_a_request_again_when_its_worker_is_lost_and_passes_on_its_errors():
    from ray.exceptions import ActorDiedError, RayTaskError

    from deploy.serve_app import RayRunner
    from pipelines.errors import GenerationError
    from pipelines.service import Generated

    done = Generated(None, [], [], [], 0.0, 0.0, worker="w2")
    steps: list = []
    runner = RayRunner(FakeWorkers([ActorDiedError(), [("step", 0, 1, 2, "latents"), ("done", done)]]), 2)
    assert runner.run(None, "r1", lambda *step: steps.append(step), None).worker == "w2"
    assert steps == [(0, 1, 2, "latents")] and runner.status()["retries"] == 1
    failure = GenerationError("The request took longer than the time limit", title="Time limit")
    runner = RayRunner(FakeWorkers([RayTaskError("generate", "traceback", failure)]), 2)
    with pytest.raises(GenerationError) as raised:
        runner.run(None, "r2", None, None)
    assert raised.value is failure
