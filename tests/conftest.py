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
