"""Throughput and latency of the app on Ray Serve (deploy/serve_app.py) with 1 and 2 workers.

`python -m bench.ray_throughput [--requests 8] [--steps 4] [--size 256]`: for each worker
count, a local Ray serves `build_app` on the demo family (`--demo`, CPU workers, one CPU
each), takes two warm-up requests, then `--requests` RunPod `/runsync` requests sent two per
worker at once. Prints a Markdown row per worker count, with what each start-up step took
(ray.init, serve.start, serve.run until the app is ready), after the seconds `create_server`
takes in one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.launched import REPO, free_port

RUNSYNC = "v2/black-forest-labs-flux-1-dev/runsync"


def served(workers: int, outputs: str):
    """(base URL) of `build_app` with `workers` CPU workers on a fresh local Ray."""
    import ray
    from ray import serve

    from deploy.serve_app import build_app

    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    if "FLUX_PLAYGROUND_DEMO_MODELS" in os.environ:
        env["FLUX_PLAYGROUND_DEMO_MODELS"] = os.environ["FLUX_PLAYGROUND_DEMO_MODELS"]
    started = time.monotonic()
    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    ray_ready = time.monotonic()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve_ready = time.monotonic()
    serve.run(build_app({"flags": f"--demo --outputs-dir {outputs}", "workers": workers}), name="flux",
              route_prefix="/")
    start_up = {"ray_s": ray_ready - started, "serve_s": serve_ready - ray_ready,
                "app_s": time.monotonic() - serve_ready}
    return f"http://127.0.0.1:{port}/", start_up


def single_process_start(outputs: str) -> float:
    """Seconds `app.create_server` takes to build the same app in one process, as `python app.py`."""
    import app

    started = time.monotonic()
    app.create_server(app.parse_args(["--demo", "--outputs-dir", outputs]))
    return time.monotonic() - started


def timed_request(base_url: str, body: dict) -> float:
    started = time.monotonic()
    response = requests.post(base_url + RUNSYNC, json={"input": body}, timeout=600)
    response.raise_for_status()
    assert response.json()["status"] == "COMPLETED", response.text
    return time.monotonic() - started


def measure(workers: int, count: int, body: dict) -> dict:
    """Requests per second and latency (p50, max) over `count` requests, 2 per worker at once."""
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as outputs:
        base_url, start_up = served(workers, outputs)
        try:
            for _ in range(2):  # each worker's first request pays for its warm-up
                timed_request(base_url, body)
            started = time.monotonic()
            with ThreadPoolExecutor(2 * workers) as pool:
                latencies = list(pool.map(lambda seed: timed_request(base_url, {**body, "seed": seed}),
                                          range(count)))
            elapsed = time.monotonic() - started
        finally:
            serve.shutdown()
            ray.shutdown()
    return {"workers": workers, "requests": count, "per_second": count / elapsed,
            "p50_s": statistics.median(latencies), "max_s": max(latencies), **start_up}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    body = {"prompt": "a fox in the snow", "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "image_format": "png"}
    with tempfile.TemporaryDirectory() as outputs:
        print(f"python app.py builds the app in {single_process_start(outputs):.1f} s (create_server, --demo)\n")
    print("| workers | requests | requests/s | latency p50 | latency max | ray.init | serve.start | serve.run |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workers in (1, 2):
        row = measure(workers, args.requests, body)
        print(f"| {row['workers']} | {row['requests']} | {row['per_second']:.2f} | {row['p50_s']:.2f} s "
              f"| {row['max_s']:.2f} s | {row['ray_s']:.1f} s | {row['serve_s']:.1f} s | {row['app_s']:.1f} s |",
              flush=True)


if __name__ == "__main__":
    main()
