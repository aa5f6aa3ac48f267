"""The page's controls in Chromium: outpaint works from its defaults, choices read as words, a
typed value out of range is refused in the page's words next to its control, Settings start
folded, and every tab has examples next to its prompt that fill it in."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DESKTOP, EXAMPLE_LAKE, REPO
from page_driver import generate, open_settings, open_tab, require_chromium, screenshot

from presets import EXAMPLES, PRESETS

require_chromium()

MODE_TABS = {mode: PRESETS.modes[mode].title for mode in PRESETS.modes}


def problem_at(control) -> str:
    """The text of the page block that holds a control: its label, help text and any problem shown."""
    return control.evaluate("el => el.closest('.block').innerText")


def options(page) -> list[str]:
    """The labels of an open dropdown's options (the selected one is ticked)."""
    return [text.removeprefix("✓").strip() for text in page.get_by_role("option").all_inner_texts()]


def test_settings_start_folded_on_every_tab(page):
    fresh = page.context.browser.new_page(viewport=DESKTOP)  # as the page opens, whatever other tests did
    try:
        fresh.goto(page.url)
        fresh.get_by_role("heading", name="FLUX Playground").wait_for()
        for title in MODE_TABS.values():
            panel = open_tab(fresh, title)
            panel.get_by_text("Settings", exact=True).wait_for()
            assert panel.get_by_label("Seed", exact=True).count() == 0, title  # drawn only when open
    finally:
        fresh.close()


def test_outpaint_with_only_an_image_generates(page):
    """The target aspect ratio starts at 16:9: 768x512 grows to 912x512 without touching a margin."""
    panel = open_tab(page, "Outpaint")
    panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.locator("img").first.wait_for()
    panel.get_by_label("Prompt").first.fill("a wide mountain lake")
    assert panel.get_by_label("Target aspect ratio").input_value() == "16:9"
    open_settings(panel).get_by_label("Steps", exact=True).fill("2")
    generate(page, panel, "outpaint-defaults")
    page.wait_for_function("panel => [...panel.querySelectorAll('img')].some("
                           "img => img.naturalWidth === 912 && img.naturalHeight === 512)", arg=panel.element_handle())


def test_an_outpaint_problem_shows_next_to_its_control_in_the_pages_words(page):
    panel = open_tab(page, "Outpaint")
    if not panel.locator("img").count():
        panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.get_by_label("Prompt").first.fill("a wide mountain lake")
    left = panel.get_by_label("Left", exact=True)
    left.fill("5000")  # a margin: the aspect ratio turns to none by itself
    aspect = panel.get_by_label("Target aspect ratio")
    page.wait_for_function("el => el.value === 'None: grow by the margins'", arg=aspect.element_handle())
    panel.get_by_role("button", name="Generate").click()
    panel.get_by_text("Left must be an integer from 0 to 1024, got 5000.").wait_for()
    assert "Left must be an integer from 0 to 1024, got 5000." in problem_at(left)
    left.fill("0")  # no margin and no aspect ratio: nothing to grow
    panel.get_by_role("button", name="Generate").click()
    expected = ("Choose where to extend the image: an aspect ratio other than none, or a margin "
                "(Left, Right, Top or Bottom) above 0.")
    panel.get_by_text(expected).wait_for()
    screenshot(page, "outpaint-problem")
    assert expected in problem_at(aspect)
    assert "expand_" not in panel.inner_text() and "aspect_ratio" not in panel.inner_text()


def test_inpaint_without_painting_says_so_next_to_the_editor(page):
    panel = open_tab(page, "Inpaint")
    panel.locator("#inpaint-editor input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.locator("#inpaint-editor canvas").first.wait_for()
    panel.get_by_label("Prompt").first.fill("a boat on the lake")
    panel.get_by_role("button", name="Generate").click()
    expected = "Image has nothing painted on it: paint over what to change, or upload a Mask (white is repainted)."
    panel.get_by_text(expected).wait_for()
    screenshot(page, "inpaint-unpainted")
    assert expected in panel.locator("#inpaint-editor").inner_text()


def test_choices_read_as_words_and_send_their_values(page):
    panel = open_settings(open_tab(page, "Text-to-Image"))
    size = panel.get_by_label("Image size")
    assert size.input_value() == "Landscape 4:3 · 1024×768"
    for name in ("PNG", "JPEG", "WebP"):
        assert panel.get_by_role("radio", name=name).count() == 1
    assert panel.get_by_label("Step caching").input_value() == "Automatic"
    size.click()
    labels = options(page)
    expected = [f"{label} · {width}×{height}" for label, (width, height) in
                zip(("Square HD", "Square", "Portrait 3:4", "Portrait 9:16", "Landscape 4:3", "Landscape 16:9"),
                    PRESETS.image_sizes.values(), strict=True)]
    assert labels == [*expected, "Custom size"]
    page.get_by_role("option", name="Square · 512×512").click()
    panel.get_by_label("Prompt").first.fill("a small square fox")
    panel.get_by_label("Steps", exact=True).fill("2")
    generate(page, panel, "square-by-label")  # the label picked, the value sent: square is 512x512
    page.wait_for_function("panel => [...panel.querySelectorAll('img')].some("
                           "img => img.naturalWidth === 512 && img.naturalHeight === 512)", arg=panel.element_handle())
    panel = open_settings(open_tab(page, "Image-to-Image"))
    assert panel.get_by_label("Image size").input_value() == "Match the input image"
    panel = open_tab(page, "Control")
    assert panel.get_by_role("radio", name="Canny edges").is_checked()
    assert panel.get_by_role("radio", name="Depth").count() == 1
    panel = open_settings(open_tab(page, "Kontext Edit"))
    panel.get_by_label("Step caching").click()
    assert options(page) == ["Automatic", "Off", "First block cache", "TaylorSeer"]
    page.keyboard.press("Escape")


def test_typing_500_steps_is_refused_with_the_range_and_the_next_request_works(page):
    panel = open_settings(open_tab(page, "Text-to-Image"))
    panel.get_by_label("Prompt").first.fill("a fox counting steps")
    steps = panel.get_by_label("Steps", exact=True)
    steps.fill("500")
    panel.get_by_role("button", name="Generate").click()
    panel.get_by_text("Steps must be an integer from 1 to 50, got 500.").wait_for()
    screenshot(page, "steps-refused")
    assert "Steps must be an integer from 1 to 50, got 500." in problem_at(steps)
    assert steps.input_value() == "500"  # as typed: not clamped to 50
    steps.fill("2")
    generate(page, panel, "steps-after-refusal")
    assert panel.get_by_text("Steps must be").count() == 0


@pytest.mark.parametrize("mode", list(MODE_TABS))
def test_every_tab_has_examples_next_to_its_prompt_that_fill_it_in(page, mode):
    examples = EXAMPLES[mode]
    assert examples and all(example["prompt"].strip() for example in examples)  # no empty prompt row
    panel = open_tab(page, MODE_TABS[mode])
    prompt = panel.locator("textarea").first
    prompt.fill("")
    heading = panel.get_by_text("Examples", exact=True)
    # Right under the prompt box, above the Generate button (and the folded Settings).
    assert prompt.bounding_box()["y"] < heading.bounding_box()["y"] < \
        panel.get_by_role("button", name="Generate").bounding_box()["y"]
    example = examples[-1]
    image = Path(example["image"]).name if "image" in example else None
    shown = panel.locator(f"img[src$='/{image}']").count() if image else 0
    panel.get_by_text(example["prompt"][:30]).first.click()
    page.wait_for_function("([el, text]) => el.value === text", arg=[prompt.element_handle(), example["prompt"]])
    if mode == "inpaint":  # the editor draws its image on a canvas: its upload prompt goes away
        panel.get_by_text(PRESETS.modes[mode].placeholders["image"]).wait_for(state="hidden")
    elif image:  # the example's image is now the input, beside its thumbnail
        page.wait_for_function("([panel, name, shown]) => panel.querySelectorAll(`img[src$='/${name}']`).length > shown",
                               arg=[panel.element_handle(), image, shown])
