"""The app on Ray Serve (deploy/serve_app.py): a local Ray, two CPU workers on the demo family,
the ingress serving the same routes. Requests go in through RunPod's routes, gradio_client and
the openai SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray
import requests
from conftest import REPO, free_port, wait_until
from ray import serve
from ray_serving import (
    RUNSYNC,
    SLOW,
    image_and_parameters,
    ray_status,
    run_sync,
    single_process_images,
    status_client,
    via_fal_lora,
    via_gradio_client,
    via_openai,
    via_runpod,
    worker_actor_names,
)


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
    # Logical CPUs: each replica takes one (its torch threads), a second application included.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
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


def test_requests_from_every_way_in_spread_over_both_workers_with_the_single_process_images(ray_app, tmp_path):
    calls = [(via_runpod, 1), (via_runpod, 2), (via_gradio_client, 3), (via_openai, 4)]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(lambda call: call[0](ray_app, call[1]), calls))
    workers = {parameters["timings"]["worker"] for _, parameters in results}
    assert len(workers) == 2, workers
    assert [parameters["seeds"][0] for _, parameters in results] == [1, 2, 3, 4]
    assert all(image.size == (256, 256) for image, _ in results)
    # Every image equals the one-process app's for the same request, whichever way it came in.
    references = single_process_images(tmp_path, lambda url: [call[0](url, call[1])[0] for call in calls])
    for (image, _), reference in zip(results, references, strict=True):
        assert image.convert("RGB").tobytes() == reference.convert("RGB").tobytes()
    status = ray_status(ray_app)
    assert set(status["requests_served"]) == workers and sum(status["requests_served"].values()) == 4
    assert status["replicas"].get("RUNNING") == 2
    cards = {card["worker"]: card for card in status["workers"]}
    assert set(cards) == workers
    for card in cards.values():  # each worker says where it runs and what it holds
        assert card["device"] == "cpu" and card["running"] is None and card["requests_served"] >= 1
        assert card["ranks"] == 1 and "split_over" not in card["holds"]["components"]["transformer"]
        assert {"transformer", "text_encoder_2", "vae"} <= set(card["holds"]["components"])
        assert card["holds"]["components"]["transformer"]["bytes"] > 0 and card["holds"]["resident_bytes"] > 0


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
    # Serve starts a replica in its place; /status counts the lost one.
    wait_until(lambda: len(names := worker_actor_names()) == 2 and killed not in names, seconds=120)
    wait_until(lambda: ray_status(ray_app)["replicas"] == {"RUNNING": 2}, seconds=120)
    wait_until(lambda: len(ray_status(ray_app)["workers"]) == 2, seconds=60)
    status = ray_status(ray_app)
    assert status["restarts"] >= 1 and killed.split("#")[-1] in status["lost"]
    assert killed not in {card["actor"] for card in status["workers"]}


def test_a_lora_loaded_at_the_ingress_applies_on_every_worker_and_unloads(ray_app):
    """The LoRA file is read where it was asked for (the ingress) and reaches each worker
    through the object store; every worker then makes the same image for the same seed."""
    client = status_client(ray_app)
    base = via_gradio_client(ray_app, 21)[0]
    listed = client.predict(source="tiny-style-lora", name=None, api_name="/load_lora")
    assert list(listed) == ["tiny-style-lora"] and listed["tiny-style-lora"]["rank"] > 0
    with ThreadPoolExecutor(4) as pool:
        styled = list(pool.map(lambda _: via_gradio_client(ray_app, 21, loras="tiny-style-lora:1"), range(4)))
    assert len({parameters["timings"]["worker"] for _, parameters in styled}) == 2
    assert all(image.tobytes() == styled[0][0].tobytes() for image, _ in styled)
    assert styled[0][0].tobytes() != base.tobytes()
    assert all(card["holds"]["loras"] == ["tiny-style-lora"] for card in ray_status(ray_app)["workers"])
    client.predict(name="tiny-style-lora", api_name="/unload_lora")
    with ThreadPoolExecutor(4) as pool:
        after = list(pool.map(lambda _: via_gradio_client(ray_app, 21), range(4)))
    assert len({parameters["timings"]["worker"] for _, parameters in after}) == 2
    assert all(image.tobytes() == base.tobytes() for image, _ in after)  # the base, on both workers
    assert all(card["holds"]["loras"] == [] for card in ray_status(ray_app)["workers"])
    with pytest.raises(Exception, match="not loaded"):
        via_gradio_client(ray_app, 21, loras="tiny-style-lora:1")


def test_cancelling_a_job_stops_its_run_on_the_worker(ray_app):
    job = requests.post(ray_app + RUNSYNC.replace("runsync", "run"), json={"input": {**SLOW, "seed": 5}},
                        timeout=30).json()
    wait_until(lambda: any(card["running"] for card in ray_status(ray_app)["workers"]), seconds=60)
    cancelled_before = sum(card["cancelled"] for card in ray_status(ray_app)["workers"])
    cancelled_at = time.monotonic()
    answer = requests.post(ray_app + RUNSYNC.replace("runsync", f"cancel/{job['id']}"), timeout=30)
    assert answer.status_code == 200, answer.text
    status_url = ray_app + RUNSYNC.replace("runsync", f"status/{job['id']}")
    wait_until(lambda: requests.get(status_url, timeout=30).json()["status"] == "CANCELLED", seconds=10)
    # The worker stops at its next step, long before the run's 40 steps would end.
    wait_until(lambda: not any(card["running"] for card in ray_status(ray_app)["workers"]), seconds=10)
    stopped_after = time.monotonic() - cancelled_at
    assert sum(card["cancelled"] for card in ray_status(ray_app)["workers"]) == cancelled_before + 1
    started = time.monotonic()
    run_sync(ray_app, **SLOW, seed=5)
    assert stopped_after < (time.monotonic() - started) / 2, "the worker ran the cancelled job to its end"


def test_the_worker_count_or_autoscaling_range_sets_how_many_run_at_once():
    from deploy.serve_app import worker_scaling

    assert worker_scaling({"workers": 3}) == ({"num_replicas": 3}, 3)
    options, capacity = worker_scaling({"autoscaling": {"min_replicas": 1, "max_replicas": 4}})
    assert capacity == 4 and options["autoscaling_config"] == {"target_ongoing_requests": 1, "min_replicas": 1,
                                                                "max_replicas": 4}
    with pytest.raises(ValueError, match="max_replicas"):
        worker_scaling({"autoscaling": {"min_replicas": 1}})
    with pytest.raises(ValueError, match="workers must be 1 or more"):
        worker_scaling({"workers": 0})


class FakeWorkers:
    """A DeploymentHandle stand-in whose streams play back `outcomes` in turn: an exception
    to raise, or a list of events."""

    def __init__(self, outcomes: list):
        self.outcomes = outcomes
        self.generate = self

    def options(self, stream: bool):
        return self

    def remote(self, request, request_id, loras):
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        yield from outcome


def test_the_runner_sends_a_request_again_when_its_worker_is_lost_and_passes_on_its_errors():
    from ray.exceptions import ActorDiedError, RayTaskError

    from deploy.ray_runner import RayRunner
    from pipelines.errors import GenerationError
    from pipelines.service import Generated

    done = Generated(None, [], [], [], 0.0, 0.0, worker="w2")
    steps: list = []
    runner = RayRunner(FakeWorkers([ActorDiedError(), [("step", 0, 1, 2, "latents"), ("done", done)]]), 2, "flux")
    assert runner.run(None, "r1", lambda *step: steps.append(step), None).worker == "w2"
    assert steps == [(0, 1, 2, "latents")] and runner.retries == 1 and runner.served == {"w2": 1}
    failure = GenerationError("The request took longer than the time limit", title="Time limit")
    runner = RayRunner(FakeWorkers([RayTaskError("generate", "traceback", failure),
                                    RayTaskError("generate", "traceback", KeyError("vae"))]), 2, "flux")
    with pytest.raises(GenerationError) as raised:
        runner.run(None, "r2", None, None)
    assert raised.value is failure
    with pytest.raises(GenerationError, match=r"The worker failed \(KeyError: 'vae'\)"):
        runner.run(None, "r3", None, None)
    lost = [ActorDiedError()] * 4
    with pytest.raises(GenerationError, match="4 workers were lost"):
        RayRunner(FakeWorkers(lost), 2, "flux").run(None, "r4", None, None)


@pytest.fixture(scope="module")
def split_worker(ray_app, tmp_path_factory):
    """A second application on the same cluster (under /cp/): one worker given two ranks, each
    image split over them (context parallelism, gloo on CPU)."""
    from deploy.serve_app import build_app

    outputs = tmp_path_factory.mktemp("ray-cp-outputs")
    flags = f"--demo --outputs-dir {outputs} --lora-dir {outputs / 'loras'} --max-loras 1"
    serve.run(build_app({"flags": flags, "workers": 1, "context_parallel": 2}), name="flux-cp", route_prefix="/cp")
    try:
        yield ray_app + "cp/"
    finally:
        serve.delete("flux-cp")


def test_a_worker_of_two_ranks_splits_each_image_and_draws_the_single_process_pixels(split_worker, tmp_path):
    """Both ranks run every request (LoRAs too: fal's flux-lora loads one first); the split
    sums in another order, so a pixel may be one level off."""
    split = [via_runpod(split_worker, 1)[0], via_fal_lora(split_worker, 2)]
    reference = single_process_images(tmp_path, lambda url: [via_runpod(url, 1)[0], via_fal_lora(url, 2)])
    for image, expected in zip(split, reference, strict=True):
        difference = np.abs(np.asarray(image.convert("RGB"), int) - np.asarray(expected.convert("RGB"), int))
        assert image.size == (256, 256) and difference.max() <= 1 and difference.mean() < 0.01, difference.max()
    assert np.abs(np.asarray(split[0], int) - np.asarray(split[1], int)).mean() > 1  # seed and LoRA tell
    card = ray_status(split_worker)["workers"][0]
    assert card["ranks"] == 2 and card["holds"]["loras"] == ["tiny-style-lora"] and card["requests_served"] == 2
    assert card["holds"]["components"]["transformer"]["split_over"] == 2


@pytest.mark.parametrize("config", ["serve.yaml", "rayservice.yaml"])
def test_the_shipped_serve_configs_are_valid_for_serve_and_the_builder(config):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from deploy.serve_app import FluxIngress, FluxWorker, build_app

    loaded = yaml.safe_load((REPO / "deploy" / config).read_text())
    if loaded.get("kind") == "RayService":
        loaded = yaml.safe_load(loaded["spec"]["serveConfigV2"])
    for application in ServeDeploySchema.model_validate(loaded).applications:
        assert application.import_path == "deploy.serve_app:build_app"
        assert {deployment.name for deployment in application.deployments} <= {FluxWorker.name, FluxIngress.name}
        build_app(application.args)  # the builder takes its args


def test_a_worker_of_two_ranks_refuses_what_it_cannot_split_and_serves_the_next_request(split_worker):
    """Refused before the other rank hears of it, so the ranks stay in step; First Block Cache
    gives way to TaylorSeer; and a LoRA unloaded at the ingress leaves room on every rank for
    the next one (--max-loras 1)."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(split_worker, verbose=False)
    with pytest.raises(AppError, match="289 image tokens don't split evenly over 2 ranks"):
        via_gradio_client(split_worker, 3, width=272, height=272)
    cached = via_gradio_client(split_worker, 3, step_cache="first_block")[1]
    assert cached["step_cache"] == "taylorseer" and "ran as taylorseer" in " ".join(cached["warnings"])
    if "tiny-style-lora" not in client.predict(api_name="/status")["loras"]:
        client.predict(source="tiny-style-lora", name=None, api_name="/load_lora")
    client.predict(name="tiny-style-lora", api_name="/unload_lora")
    listed = client.predict(source="tiny-kohya-style.safetensors", name="kohya", api_name="/load_lora")
    assert list(listed) == ["kohya"]
    plain, styled = via_gradio_client(split_worker, 4)[0], via_gradio_client(split_worker, 4, loras="kohya:1")[0]
    assert plain.size == styled.size == (256, 256)
    assert np.abs(np.asarray(styled, int) - np.asarray(plain, int)).mean() > 1
    card = ray_status(split_worker)["workers"][0]
    assert card["holds"]["loras"] == ["kohya"] and card["failed"] == 1 and card["ranks"] == 2


def test_the_ingress_restarting_loses_no_job(ray_app):
    """The job store is the ingress's (in its outputs folder): a job running when the ingress
    is killed runs again, from its recorded request, once Serve has started a new one."""
    job = requests.post(ray_app + RUNSYNC.replace("runsync", "run"), json={"input": {**SLOW, "seed": 9}},
                        timeout=30).json()
    wait_until(lambda: any(card["running"] for card in ray_status(ray_app)["workers"]), seconds=60)
    killed = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
              if "::flux#FluxIngress#" in actor["name"]]
    ray.kill(ray.get_actor(killed[0], namespace="serve"))
    status_client.cache_clear()  # its session was the killed ingress's

    def finished() -> dict | None:
        try:
            body = requests.get(ray_app + RUNSYNC.replace("runsync", f"status/{job['id']}"), timeout=10).json()
        except (requests.RequestException, ValueError):  # no ingress yet
            return None
        return body if body.get("status") in ("COMPLETED", "FAILED", "CANCELLED") else None

    body = wait_until(finished, seconds=240)
    assert body["status"] == "COMPLETED", body
    image, parameters = image_and_parameters(body["output"]["image_url"])
    assert image.size == (1024, 1024) and parameters["seeds"] == [9]
    assert ray_status(ray_app)["replicas"] == {"RUNNING": 2}
    health = requests.get(ray_app + RUNSYNC.replace("runsync", "health"), timeout=30).json()
    assert health["jobs"]["retried"] >= 1  # run again by the new ingress, not finished by the old
    assert health["workers"] == {**health["workers"], "idle": 2, "running": 0}  # RunPod's view: two workers
