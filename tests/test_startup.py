"""`python app.py` as a user starts it: no GPU, no network; demo mode on request or as a fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import free_port

REPO = Path(__file__).resolve().parent.parent


def start_app(args: list[str], family_root: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
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


def page_config(url: str) -> dict:
    return requests.get(url + "config", timeout=10).json()


def banner_text(config: dict) -> str:
    return " ".join(
        str(c["props"].get("value", "")) for c in config["components"]
        if c.get("props", {}).get("elem_id") == "demo-banner"
    )


def test_demo_flag_serves_the_page_without_gpu_or_network(family, family_root, tmp_path):
    process, url = start_app(["--demo"], family_root, tmp_path)
    try:
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "FLUX Playground" in page.text
        config = page_config(url)
        assert "Demo mode" in banner_text(config)
        labels = {c["props"].get("label") for c in config["components"]}
        assert {"Text-to-Image", "Image-to-Image", "Kontext Edit", "Redux"} <= labels
    finally:
        stop(process)


def test_unloadable_model_falls_back_to_demo_and_says_why(family, family_root, tmp_path):
    missing = tmp_path / "no-such-model"
    process, url = start_app(["--device", "cpu", "--dev-model", str(missing)], family_root, tmp_path)
    try:
        banner = banner_text(page_config(url))
        assert str(missing) in banner and "could not be loaded" in banner
        assert "DEMO mode" in console(tmp_path) and str(missing) in console(tmp_path)
    finally:
        stop(process)


def test_no_accelerator_falls_back_to_demo_and_says_why(family, family_root, tmp_path):
    process, url = start_app([], family_root, tmp_path)
    try:
        assert "no CUDA accelerator" in banner_text(page_config(url))
        assert "no CUDA accelerator" in console(tmp_path)
    finally:
        stop(process)


def test_no_demo_fallback_exits_with_the_reason(family_root, tmp_path):
    missing = tmp_path / "no-such-model"
    done = subprocess.run(
        [sys.executable, "app.py", "--device", "cpu", "--no-demo-fallback", "--dev-model", str(missing)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert str(missing) in done.stderr and "could not be loaded" in done.stderr
