"""The results side of the page in Chromium: progress on its own line above a fixed-size
gallery, Stop's state, before/after, restores that never break the page and bring back the
input images, history captions, the banner; every tab at desktop and phone width."""

from __future__ import annotations

import re

from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, PHONE, REPO, call
from page_driver import ARTIFACTS, FINAL_CAPTION, generate, open_settings, open_tab, require_chromium

from pipelines.modes.table import MODES
from presets import PRESETS

require_chromium()

# Gradio's badge on every output of an event that failed (a 500, a raised error).
ERROR_BADGE = ".error:visible"
NOTHING_SELECTED = "Nothing to restore yet"
NO_PARAMETERS = "That image carries no parameters this playground can read"


def test_seed_used_is_empty_before_anything_has_run(page):
    panel = open_tab(page, "Text-to-Image")
    seed_used = panel.get_by_label("Seed used")
    page.wait_for_function("el => el.value === ''", arg=seed_used.element_handle())
    assert seed_used.get_attribute("placeholder") == "shown with the results"


def test_progress_reads_image_and_step_above_a_gallery_that_keeps_its_size(page):
    panel = open_settings(open_tab(page, "Text-to-Image"))
    panel.get_by_label("Prompt").first.fill("a fox watching the progress")
    panel.get_by_label("Number of images").first.fill("2")
    panel.get_by_label("Steps").first.fill("16")
    panel.get_by_role("button", name="Generate").click()
    samples = []  # (status line text, gallery height, a preview shown in the gallery)
    while not panel.get_by_text(FINAL_CAPTION).count():
        samples.append(page.evaluate("""() => {
            const panel = [...document.querySelectorAll('.tabitem')].find(t => t.offsetParent !== null);
            const gallery = panel.querySelector('.results-gallery');
            const preview = [...gallery.querySelectorAll('img')].some(
                img => img.alt.startsWith('preview') && img.complete && img.naturalWidth > 0);
            return [panel.querySelector('.run-status').innerText, gallery.getBoundingClientRect().height, preview];
        }"""))
        page.wait_for_timeout(50)
    texts = " | ".join(text for text, _, _ in samples)
    assert re.search(r"image 2 of 2 · step \d+ of 16", texts), texts
    assert any(preview for _, _, preview in samples), "no preview was ever visible in the results"
    assert {height for _, height, _ in samples} == {560}
    panel.get_by_label("Number of images").first.fill("1")


def test_a_waiting_request_shows_its_place_in_line_on_the_status_line(page, client):
    busy = client.submit(prompt="a request ahead in the queue", image_size="square_hd", num_inference_steps=40,
                         live_preview=False, api_name="/text_to_image")
    panel = open_settings(open_tab(page, "Text-to-Image"))
    panel.get_by_label("Prompt").first.fill("a fox waiting its turn")
    panel.get_by_label("Steps").first.fill("2")
    seed_used = panel.get_by_label("Seed used")
    before = seed_used.input_value()
    panel.get_by_role("button", name="Generate").click()
    # In the one line that the page and every API share: "Waiting: 1 request ahead · about 3 s".
    panel.locator(".run-status").first.get_by_text(re.compile(r"Waiting: (next in line|\d+ requests? ahead)")).wait_for()
    busy.result()
    # Its own result, not the one shown before it: a new seed.
    page.wait_for_function("([el, old]) => el.value !== old && el.value !== ''", arg=[seed_used.element_handle(), before])


def test_stop_ends_in_a_stopped_state_with_nothing_kept_and_the_next_request_runs(page):
    panel = open_settings(open_tab(page, "Text-to-Image"))
    panel.get_by_label("Prompt").first.fill("a fox that is stopped")
    panel.get_by_label("Steps").first.fill("50")
    panel.get_by_role("button", name="Generate").click()
    status = panel.locator(".run-status").first
    status.get_by_text(re.compile(r"step \d+ of 50")).wait_for()  # it is under way
    panel.get_by_role("button", name="Stop").click()
    status.get_by_text(re.compile(r"Stopped at (image \d of \d · )?step \d+ of 50")).wait_for()
    assert panel.locator(".results-gallery img").count() == 0
    assert panel.get_by_label("Seed used").input_value() == ""
    panel.get_by_label("Steps").first.fill("2")
    generate(page, panel, "after-stop")
    assert "Stopped" not in status.inner_text()


def test_before_and_after_in_an_image_mode(page):
    panel = open_settings(open_tab(page, "Image-to-Image"))
    panel.locator("input[type=file]").first.set_input_files(str(REPO / EXAMPLE_LAKE))
    panel.locator("img").first.wait_for()
    panel.get_by_label("Prompt").first.fill("a lake before and after")
    panel.get_by_label("Steps").first.fill("2")
    generate(page, panel, "before-after")
    # A lone result shows its caption inside the fixed-size box, without a click.
    box, caption = (panel.locator(".results-gallery" + part).first.bounding_box() for part in ("", " .caption-label"))
    assert caption["y"] + caption["height"] <= box["y"] + box["height"] and caption["height"] > 0
    comparison = page.locator("#image_to_image-comparison img")
    page.wait_for_function("n => document.querySelectorAll('#image_to_image-comparison img').length >= n", arg=2)
    sizes = comparison.evaluate_all("imgs => imgs.map(i => [i.complete && i.naturalWidth, i.naturalHeight])")
    assert len({tuple(size) for size in sizes}) == 1 and sizes[0][0] == 768  # input and result, one size


def test_restore_with_nothing_selected_says_so_and_leaves_the_page_working(page):
    open_tab(page, "History")
    page.locator("#restore-history").click()
    page.get_by_text(NOTHING_SELECTED).first.wait_for()
    page.wait_for_timeout(500)
    assert page.locator(ERROR_BADGE).count() == 0
    panel = open_settings(open_tab(page, "Text-to-Image"))
    panel.get_by_label("Prompt").first.fill("a fox after an empty restore")
    panel.get_by_label("Steps").first.fill("2")
    generate(page, panel, "after-empty-restore")


def test_dropping_an_image_the_app_did_not_make_says_so_and_breaks_nothing(page):
    panel = open_tab(page, "Text-to-Image")
    panel.get_by_text("Restore parameters from a saved image").click()
    panel.locator("#restore-text_to_image input[type=file]").set_input_files(str(REPO / EXAMPLE_BIRD))
    page.get_by_text(NO_PARAMETERS).first.wait_for()
    page.wait_for_timeout(500)
    assert page.locator(ERROR_BADGE).count() == 0
    assert panel.get_by_label("Prompt").first.input_value() == "a fox after an empty restore"


def test_history_restores_an_image_mode_result_with_its_input_image(page, client):
    call(client, "/image_to_image", image=EXAMPLE_BIRD, prompt="a restored bird with its input",
         num_inference_steps=2, image_size="custom", width=256, height=256, seed=9)
    open_tab(page, "History")
    page.get_by_role("button", name="Refresh").click()
    newest = page.locator("#history-gallery .caption-label").first
    newest.get_by_text("a restored bird with its input").wait_for()  # captions lead with the prompt
    page.locator("#history-gallery img").first.click()
    page.locator("#history-parameters").get_by_text("a restored bird with its input").wait_for()
    page.locator("#restore-history").click()
    panel = page.locator(".tabitem:visible")
    prompt = panel.get_by_label("Prompt").first
    page.wait_for_function("el => el.value === 'a restored bird with its input'", arg=prompt.element_handle())
    # The 640x640 input (the tab held the 768x512 lake before), not the 256x256 result.
    page.wait_for_function("""() => [...document.querySelectorAll('.tabitem')].find(t => t.offsetParent !== null)
        .querySelector('img')?.naturalWidth === 640""")


def test_the_demo_banner_is_a_styled_notice(page):
    banner = page.locator(".prose.demo-banner")
    assert banner.evaluate("el => getComputedStyle(el).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    assert banner.evaluate("el => parseFloat(getComputedStyle(el).borderLeftWidth)") >= 4


def tab_titles() -> list[str]:
    return [PRESETS.modes[name].title for name in MODES] + ["LoRAs", "History"]


def choose_tab(page, title: str):
    """A tab by its title, also at a phone's width, where Gradio moves the others into "More tabs"."""
    tab = page.get_by_role("tab", name=title, exact=True)
    if tab.is_visible():
        tab.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=re.compile(f"^{re.escape(title)}$")).click()
    page.wait_for_function("t => document.querySelector(`[role=tab][aria-selected=true]`)?.innerText === t", arg=title)
    return page.locator(".tabitem:visible")


def test_every_tab_at_desktop_and_phone_width(page):
    """Screenshots of every tab at 1400 and 390 px to test-artifacts/; at 390 nothing is wider
    than the screen and each mode's Generate is within it."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        for width, viewport in ((1400, None), (390, PHONE)):
            if viewport:
                page.set_viewport_size(viewport)
                page.wait_for_timeout(500)
            for title in tab_titles():
                panel = choose_tab(page, title)
                page.wait_for_timeout(300)
                slug = title.lower().replace(" ", "-")
                page.screenshot(path=str(ARTIFACTS / f"tab-{slug}-{width}.png"), full_page=True)
                if width == 390:
                    assert page.evaluate("document.documentElement.scrollWidth") <= 390, title
                    if title in (PRESETS.modes[name].title for name in MODES):
                        box = panel.get_by_role("button", name="Generate").bounding_box()
                        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (title, box)
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
        choose_tab(page, "Text-to-Image")
