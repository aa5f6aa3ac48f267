"""The real page in Debian's Chromium, driven by Playwright: every tab generates and shows its
image, Kontext's result goes back as the next input, History restores parameters."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine's browser tests run it: no sandbox as root, no background network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
FINAL_CAPTION = re.compile(r"tiny random weights\) · seed \d+$")

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (`apt-get install chromium`; .ci/run does it)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(base_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(base_url)
        page.get_by_role("heading", name="FLUX Playground").wait_for()
        yield page
        browser.close()


def open_tab(page, title: str):
    page.get_by_role("tab", name=title, exact=True).click()
    return page.locator(".tabitem:visible")


def generate(page, panel, name: str):
    """Click Generate and wait for the new final image (previews say 'preview' in their caption)."""
    seed_used = panel.get_by_label("Seed used")
    before = seed_used.input_value()
    panel.get_by_role("button", name="Generate").click()
    page.wait_for_function("([el, old]) => el.value !== old && el.value !== ''", arg=[seed_used.element_handle(), before])
    panel.get_by_text(FINAL_CAPTION).first.wait_for()
    image = panel.locator("img").first
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)
    return image


@pytest.mark.parametrize("title, image, prompt", [
    ("Text-to-Image", None, "a red fox in the snow"),
    ("Image-to-Image", EXAMPLE_LAKE, "a winter lake at night"),
    ("Kontext Edit", EXAMPLE_BIRD, "make the bird red"),
    ("Redux", EXAMPLE_BIRD, ""),
])
def test_each_tab_generates_and_shows_its_image(page, title, image, prompt):
    panel = open_tab(page, title)
    assert page.locator("#demo-banner").is_visible()
    if image:
        panel.locator("input[type=file]").first.set_input_files(str(REPO / image))
        panel.locator("img").first.wait_for()  # the upload shows before we go on
    if prompt:
        panel.get_by_label("Prompt" if title != "Kontext Edit" else "Instruction").first.fill(prompt)
    generate(page, panel, title.lower().replace(" ", "-"))
    assert panel.get_by_label("Seed used").input_value().isdigit()


def test_kontext_result_becomes_the_next_input(page):
    panel = open_tab(page, "Kontext Edit")
    if not panel.get_by_text(FINAL_CAPTION).count():
        panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_BIRD))
        panel.get_by_label("Instruction").fill("make the bird red")
        generate(page, panel, "kontext-first")
    result_src = panel.locator("img").last.get_attribute("src")
    page.locator("#edit-result-next").click()
    # The input now shows the result's file (copied by gradio under the same name).
    result_name = result_src.rsplit("/", 1)[-1]
    page.wait_for_function(
        "name => [...document.querySelectorAll('.tabitem img')].some(i => i.src.endsWith(name))", arg=result_name)


def test_history_restores_parameters_to_their_tab(page):
    open_tab(page, "Text-to-Image").get_by_label("Prompt").first.fill("a lighthouse for the history test")
    generate(page, page.locator(".tabitem:visible"), "history-source")
    open_tab(page, "History")
    page.locator("#history-gallery img").first.click()  # newest first
    page.locator("#history-parameters").get_by_text("a lighthouse for the history test").wait_for()
    open_tab(page, "Text-to-Image").get_by_label("Prompt").first.fill("something else")
    open_tab(page, "History")
    page.locator("#restore-history").click()
    restored = page.locator(".tabitem:visible").get_by_label("Prompt").first
    page.wait_for_function("el => el.value === 'a lighthouse for the history test'", arg=restored.element_handle())
    assert page.get_by_role("tab", name="Text-to-Image", exact=True).get_attribute("aria-selected") == "true"


def test_dropping_a_saved_image_on_a_tab_restores_its_parameters(page, client):
    from conftest import call

    saved = call(client, "/kontext_edit", image=EXAMPLE_BIRD, prompt="a saved kontext instruction",
                 num_inference_steps=3, image_size="custom", width=512, height=384, seed=77)
    panel = open_tab(page, "Kontext Edit")
    panel.get_by_text("Restore parameters from a saved image").click()
    panel.locator("#restore-kontext_edit input[type=file]").set_input_files(saved[0][0]["image"])
    instruction = panel.get_by_label("Instruction")
    page.wait_for_function("el => el.value === 'a saved kontext instruction'", arg=instruction.element_handle())
    assert panel.get_by_label("Seed", exact=True).input_value() == "77"
    assert panel.get_by_label("Steps").first.input_value() == "3"
