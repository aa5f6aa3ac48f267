"""Shared fixtures: the tiny demo family and the app launched in-process, driven through gradio_client."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def family_root(tmp_path_factory) -> Path:
    root = os.environ.get("FLUX_PLAYGROUND_DEMO_MODELS")
    if root is None:
        root = str(tmp_path_factory.mktemp("demo-models"))
        os.environ["FLUX_PLAYGROUND_DEMO_MODELS"] = root
    return Path(root)


@pytest.fixture(scope="session")
def family(family_root) -> dict[str, Path]:
    from pipelines.tiny_family import build_tiny_family

    return build_tiny_family(family_root)


@pytest.fixture(scope="session")
def served(family, tmp_path_factory):
    """The app in demo mode on a free local port: (gradio_client.Client, Playground)."""
    from gradio_client import Client

    import app

    args = app.parse_args(["--demo", "--port", str(free_port()),
                           "--outputs-dir", str(tmp_path_factory.mktemp("outputs"))])
    demo, playground = app.create_app(args)
    demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options(args, playground.outputs_dir))
    client = Client(f"http://{args.host}:{args.port}/", verbose=False)
    yield client, playground
    client.close() if hasattr(client, "close") else None
    demo.close()


@pytest.fixture(scope="session")
def client(served):
    return served[0]


@pytest.fixture(scope="session")
def playground(served):
    return served[1]


# --- helpers for tests -------------------------------------------------------------------------

EXAMPLE_BIRD = "presets/examples/bluebird.jpg"  # 640x640
EXAMPLE_LAKE = "presets/examples/lake_sunset.jpg"  # 768x512

# Small and fast, but with the real geometry: sizes still go through the VAE's 8x and the 2x2 packing.
FAST = {"num_inference_steps": 2, "image_size": "custom", "width": 256, "height": 256}


def result_images(result) -> list:
    """The PIL images of an endpoint's gallery output, fully decoded."""
    from PIL import Image

    gallery = result[0]
    images = []
    for item in gallery:
        with Image.open(item["image"]) as image:
            image.load()
            images.append(image)
    return images


def pixels(image):
    import numpy as np

    return np.asarray(image.convert("RGB"), dtype=np.int16)


def call(client, api_name: str, **kwargs):
    """Call an endpoint by keyword, uploading any example image argument."""
    from gradio_client import handle_file

    if "image" in kwargs and isinstance(kwargs["image"], str):
        kwargs["image"] = handle_file(kwargs["image"])
    return client.predict(api_name=api_name, **kwargs)
