"""`python app.py` as a user starts it: no GPU, no network; demo mode on request or as a fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import requests
from conftest import REPO, console, start_app, stop


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
        assert "DEMO mode (--demo)" in console(tmp_path)  # the console says so too, not only the page
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


def test_a_bad_lora_rank_stops_the_start_and_names_the_flag():
    for given in ("0", "-3", "many"):
        done = subprocess.run([sys.executable, "app.py", "--demo", "--lora-rank", given], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert f"argument --lora-rank: must be a whole number of 1 or more, got '{given}'" in done.stderr
