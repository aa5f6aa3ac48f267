"""Driving the real page in Debian's Chromium with Playwright: the tabs, Generate, screenshots.

The `page` fixture (tests/conftest.py) is the page in a fresh browser, one per test module, on
the shared demo server; test modules in tests/ui import the rest from here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import CHROMIUM, REPO

ARTIFACTS = REPO / "test-artifacts"
FINAL_CAPTION = re.compile(r"tiny random weights\) · seed \d+$")


def require_chromium() -> None:
    """Skip the calling module where Chromium is missing, except in CI (where it must be there)."""
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)", allow_module_level=True)


def open_tab(page, title: str):
    page.get_by_role("tab", name=title, exact=True).click()
    return page.locator(".tabitem:visible")


def open_settings(panel):
    """Unfold a tab's Settings (folded when the page loads; their controls are drawn only when
    open), unless they are open already."""
    seed = panel.get_by_label("Seed", exact=True)
    if not seed.count():
        panel.get_by_text("Settings", exact=True).click()
    seed.wait_for()
    return panel


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def generate(page, panel, name: str):
    """Click Generate and wait for the new final image (previews say 'preview' in their caption)."""
    seed_used = panel.get_by_label("Seed used")
    before = seed_used.input_value()
    panel.get_by_role("button", name="Generate").click()
    page.wait_for_function("([el, old]) => el.value !== old && el.value !== ''", arg=[seed_used.element_handle(), before])
    panel.get_by_text(FINAL_CAPTION).first.wait_for()
    image = panel.locator("img").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    screenshot(page, name)
    return image
