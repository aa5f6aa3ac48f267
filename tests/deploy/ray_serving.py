"""What the Ray Serve tests send and read: requests through each way in (RunPod's routes,
gradio_client, the openai SDK, fal's flux-lora), the images and parameters they answer with,
`/status`'s workers, and the same requests to the one-process app for reference."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import ray
import requests
from conftest import result_images, running_server
from PIL import Image

RUNSYNC = "v2/black-forest-labs-flux-1-dev/runsync"
SMALL = {"prompt": "a fox in the snow", "width": 256, "height": 256, "num_inference_steps": 2,
         "image_format": "png"}
# About 5 s a run on one thread here: time to kill or cancel it in.
SLOW = {**SMALL, "width": 1024, "height": 1024, "num_inference_steps": 40}


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


def single_process_images(tmp_path: Path, requests_to):
    """`requests_to(base URL)` sent to the app as `python app.py` serves it (in this process),
    on one thread as a worker with num_cpus=1 (Ray sets its OMP_NUM_THREADS): another thread
    count sums in another order, a step of 1 in a few pixels."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with running_server([], tmp_path) as (_, _, url):
            return requests_to(url)
    finally:
        torch.set_num_threads(threads)


def via_runpod(base_url: str, seed: int) -> tuple[Image.Image, dict]:
    return image_and_parameters(run_sync(base_url, seed=seed)["output"]["image_url"])


def via_gradio_client(base_url: str, seed: int, **fields) -> tuple[Image.Image, dict]:
    from gradio_client import Client

    fields = {"width": 256, "height": 256, **fields}
    result = Client(base_url, verbose=False).predict(prompt=SMALL["prompt"], num_inference_steps=2, seed=seed,
                                                     **fields, api_name="/text_to_image")
    return result_images(result)[0], result[2]


def via_openai(base_url: str, seed: int) -> tuple[Image.Image, dict]:
    from openai import OpenAI

    image = OpenAI(base_url=base_url + "v1", api_key="unused").images.generate(
        model="flux.1-dev", prompt=SMALL["prompt"], size="256x256",
        extra_body={"seed": seed, "num_inference_steps": 2, "output_format": "png"})
    return image_and_parameters(image.data[0].url)


def worker_actor_names() -> list[str]:
    """The live FluxWorker replicas' actor names."""
    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if "::flux#FluxWorker#" in actor["name"]]


FAL_LORA = {"prompt": SMALL["prompt"], "image_size": {"width": 256, "height": 256}, "num_inference_steps": 2,
            "output_format": "png", "loras": [{"path": "tiny-style-lora", "scale": 1}]}


def via_fal_lora(base_url: str, seed: int) -> Image.Image:
    """fal's flux-lora route: it loads the LoRA named by path, then generates with it."""
    response = requests.post(base_url + "fal-ai/flux-lora", json={**FAL_LORA, "seed": seed}, timeout=300)
    assert response.status_code == 200, response.text
    return image_and_parameters(response.json()["images"][0]["url"])[0]
