"""The real page in Debian's Chromium, driven by Playwright: every tab generates and shows its
image, Kontext's result goes back as the next input, History restores parameters."""

from __future__ import annotations

import pytest
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, REPO
from page_driver import (
    FINAL_CAPTION,
    generate,
    open_settings,
    open_tab,
    require_chromium,
)

require_chromium()


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
    open_settings(panel)
    assert panel.get_by_label("Seed", exact=True).input_value() == "77"
    assert panel.get_by_label("Steps").first.input_value() == "3"


def upload_to_editor(page, panel, image) -> None:
    """Give the inpaint editor `image`. On a loaded machine it sometimes drops an upload (its
    placeholder comes back): clear it and give it again until the image has stayed a moment."""
    editor = panel.locator("#inpaint-editor")
    hint = editor.get_by_text("Drop an image here")
    for _ in range(4):
        editor.locator("input[type=file]").first.set_input_files([])  # a fresh change each time
        editor.locator("input[type=file]").first.set_input_files(image)
        try:
            hint.wait_for(state="hidden", timeout=15_000)
            page.wait_for_timeout(1500)  # the editor draws the image before it takes strokes
            if not hint.is_visible():
                return
        except Exception:
            continue
    raise AssertionError("the image editor never kept the uploaded image")


def paint_a_stroke(page, panel) -> None:
    box = panel.locator("#inpaint-editor canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x + step * 8, y + step * 4)
    page.mouse.up()


def test_inpaint_paints_a_mask_in_the_editor_and_keeps_the_rest(page):
    panel = open_tab(page, "Inpaint")
    upload_to_editor(page, panel, str(REPO / EXAMPLE_BIRD))
    paint_a_stroke(page, panel)
    panel.get_by_label("Prompt").first.fill("a red balloon")
    open_settings(panel).get_by_label("Steps").first.fill("4")
    generate(page, panel, "inpaint")


def test_control_type_brings_its_defaults_and_the_map_is_shown(page):
    panel = open_settings(open_tab(page, "Control"))
    guidance = panel.get_by_label("Guidance scale").first
    page.wait_for_function("el => el.value === '30'", arg=guidance.element_handle())  # Canny's, filled at load
    panel.get_by_label("Depth", exact=True).check()
    page.wait_for_function("el => el.value === '10'", arg=guidance.element_handle())
    assert panel.get_by_label("Steps").first.input_value() == "30"
    panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.locator("img").first.wait_for()
    panel.get_by_label("Prompt").first.fill("a castle on a hill")
    panel.get_by_label("Steps").first.fill("3")
    generate(page, panel, "control")
    control_map = page.locator("#control-map img")
    control_map.wait_for()
    assert control_map.evaluate("img => img.complete && img.naturalWidth") > 0


def test_a_lora_loaded_in_its_tab_applies_by_name(page, client):
    open_tab(page, "LoRAs")
    source = page.locator("#lora-source input")
    source.fill("tiny-style-lora")
    source.press("Enter")
    page.locator("#load-lora").click()
    page.locator("#loaded-loras").get_by_text("tiny-style-lora").first.wait_for()
    try:
        panel = open_tab(page, "Text-to-Image")
        panel.get_by_label("Prompt").first.fill("a lighthouse in tiny style")
        open_settings(panel).get_by_label("LoRAs").fill("tiny-style-lora:0.8")
        panel.get_by_label("Seed", exact=True).fill("-1")  # a restore earlier may have fixed it: see a new one
        generate(page, panel, "lora")
        panel.locator("button", has_text="Parameters used").click()
        panel.get_by_text("tiny-style-lora:0.8").first.wait_for()
    finally:
        page.locator(".tabitem:visible").get_by_label("LoRAs").fill("")
        for name in client.predict(api_name="/status")["loras"]:
            client.predict(name=name, api_name="/unload_lora")


def test_outpaint_extends_the_image(page):
    panel = open_tab(page, "Outpaint")
    panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.locator("img").first.wait_for()
    panel.get_by_label("Prompt").first.fill("a wide mountain panorama")
    panel.get_by_label("Right").first.fill("256")  # which sets the aspect ratio to none
    open_settings(panel).get_by_label("Steps").first.fill("3")
    generate(page, panel, "outpaint")
    # 768x512 grown by 256 px on the right: the result shown is the 1024x512 canvas.
    page.wait_for_function("panel => [...panel.querySelectorAll('img')].some("
                           "img => img.naturalWidth === 1024 && img.naturalHeight === 512)",
                           arg=panel.element_handle())


def test_restoring_a_control_result_keeps_its_guidance_and_steps(page, client):
    """The restore sets the control type too; that must not bring in the type's defaults. Last in
    the module: right after a restore has switched tabs, the page sometimes drops the next click
    on a tab (see the issue note)."""
    from conftest import call

    saved = call(client, "/control", image=EXAMPLE_LAKE, prompt="a restored depth castle", control_type="depth",
                 guidance_scale=12, num_inference_steps=3, image_size="custom", width=256, height=256, seed=5)
    panel = open_tab(page, "Control")
    panel.get_by_role("radio", name="Canny edges").check()  # another type than the saved one: the restore changes it
    panel.get_by_text("Restore parameters from a saved image").click()
    panel.locator("#restore-control input[type=file]").set_input_files(saved[0][0]["image"])
    prompt = panel.get_by_label("Prompt").first
    page.wait_for_function("el => el.value === 'a restored depth castle'", arg=prompt.element_handle())
    page.wait_for_timeout(1000)  # a change event that followed the restore would have run by now
    assert panel.get_by_role("radio", name="Depth").is_checked()
    open_settings(panel)
    assert panel.get_by_label("Guidance scale").first.input_value() == "12"
    assert panel.get_by_label("Steps").first.input_value() == "3"
