"""Shared fixtures: the tiny demo family and the app launched in-process, driven through gradio_client."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine's browser tests run it: no sandbox as root, no background network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}


def start_app(args: list[str], family_root: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py ARGS` in its own process, as a user starts it; returns it and its URL
    once the page answers. Its console goes to tmp_path/app.log."""
    import requests

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "FLUX_PLAYGROUND_DEMO_MODELS": str(family_root), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "app.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--outputs-dir", str(tmp_path / "out"), *args],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    log.seek(0)
    pytest.fail(f"app did not serve {url}:\n{log.read()}")


def console(tmp_path: Path) -> str:
    return (tmp_path / "app.log").read_text()


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


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
    from pipelines.demo_family.family import build_tiny_family

    return build_tiny_family(family_root)


@contextlib.contextmanager
def running_server(extra_args: list[str], outputs: Path):
    """The app in demo mode, served by uvicorn on a free local port as `python app.py` serves it.
    Yields (FastAPI app, Playground, base URL)."""
    import threading
    import time

    import uvicorn

    import app

    args = app.parse_args(["--demo", "--port", str(free_port()), "--outputs-dir", str(outputs),
                           "--lora-dir", str(outputs / "loras"), *extra_args])
    server_app, playground = app.create_server(args)
    server = uvicorn.Server(uvicorn.Config(server_app, host=args.host, port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield server_app, playground, f"http://{args.host}:{args.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def served(family, tmp_path_factory):
    """(gradio_client.Client, Playground, base URL, FastAPI app) of the shared demo server."""
    from gradio_client import Client

    with running_server([], tmp_path_factory.mktemp("outputs")) as (server_app, playground, url):
        yield Client(url, verbose=False), playground, url, server_app


@pytest.fixture(scope="session")
def client(served):
    return served[0]


@pytest.fixture(scope="session")
def playground(served):
    return served[1]


@pytest.fixture(scope="session")
def base_url(served):
    return served[2]


@pytest.fixture
def rest_settings(served):
    """The REST settings of the running app; changes are undone after the test."""
    import copy

    settings = served[3].state.rest_settings
    saved = copy.deepcopy(settings)
    yield settings
    settings.fetch, settings.public_url = saved.fetch, saved.public_url


@pytest.fixture
def safety_threshold(playground):
    """Set the running app's safety threshold for one test (0 flags every image)."""
    saved = playground.safety.threshold

    def set_threshold(value: float) -> None:
        playground.safety.threshold = value

    yield set_threshold
    playground.safety.threshold = saved


@pytest.fixture(scope="session")
def image_server():
    """A local HTTP server for image URLs: serves presets/examples/ and a few special paths."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/redirect-to/"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect-to/"):])
                self.end_headers()
                return
            super().do_GET()

    root = Path(__file__).resolve().parent.parent / "presets" / "examples"
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


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


@pytest.fixture(scope="module")
def page(base_url):
    """The page in Chromium at a desktop's size, one browser per test module (tests/ui/page_driver.py)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=DESKTOP)
        page.set_default_timeout(90_000)
        page.goto(base_url)
        page.get_by_role("heading", name="FLUX Playground").wait_for()
        yield page
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test leaves a screenshot of the page in test-artifacts/failed-<test>.png."""
    report = yield
    page = item.funcargs.get("page") if report.failed and call.when == "call" else None
    if page is not None:
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(REPO / "test-artifacts" / f"failed-{item.name}.png"), full_page=True)
        except Exception:  # the browser may be what failed
            pass
    return report


def image_at(url: str):
    """The image a URL serves, decoded (its format kept)."""
    import io

    import requests
    from PIL import Image

    response = requests.get(url, timeout=30)
    response.raise_for_status()
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def wait_until(condition, seconds: float = 60):
    """Poll `condition()` until it is truthy (its value) or `seconds` pass (a failure)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s"
        time.sleep(0.05)
    return value
