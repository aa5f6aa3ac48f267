"""The LoRAs in Chromium: a load that cannot work says what to do and leaves the list of loaded
LoRAs as it was; a tab's LoRAs field naming a LoRA that is not loaded points at the LoRAs tab."""

from __future__ import annotations

from page_driver import open_settings, open_tab, require_chromium

require_chromium()

WAIT_MS = 30_000


def message_says(page, text: str) -> str:
    """The LoRAs tab's message, once it says `text`."""
    message = page.locator("#lora-message textarea")
    page.wait_for_function("([el, text]) => el.value.includes(text)", arg=[message.element_handle(), text],
                           timeout=WAIT_MS)
    return message.input_value()


def load_in_tab(page, source_text: str) -> None:
    source = page.locator("#lora-source input")
    source.fill(source_text)
    source.press("Enter")
    page.locator("#load-lora").click()


def test_a_hub_load_without_network_says_what_to_do_and_keeps_the_list(page, client):
    open_tab(page, "LoRAs")
    listed = page.locator("#loaded-loras")
    try:
        load_in_tab(page, "tiny-style-lora")
        message_says(page, "Loaded tiny-style-lora")
        load_in_tab(page, "user/repo")  # the tests' hub client is offline
        said = message_says(page, "no network to the Hugging Face Hub")
        assert said.startswith("LoRA not loaded: user/repo: ") and "use a file in the LoRA folder" in said
        assert said.endswith("or a URL instead")
        # The list still lists what is loaded: no error badge in its place.
        assert "tiny-style-lora" in listed.inner_text() and "Error" not in listed.inner_text()
    finally:
        for name in client.predict(api_name="/status")["loras"]:
            client.predict(name=name, api_name="/unload_lora")


def test_an_unknown_lora_name_says_to_load_it_in_the_loras_tab(page):
    panel = open_settings(open_tab(page, "Text-to-Image"))  # the LoRAs field is in Settings
    panel.get_by_label("Prompt").first.fill("a lighthouse")
    field = panel.get_by_label("LoRAs")
    field.fill("tiny-x:0.5")
    try:
        panel.get_by_role("button", name="Generate").click()
        said = panel.get_by_text("'tiny-x' is not loaded: load it in the LoRAs tab or with /load_lora").first
        said.wait_for(timeout=WAIT_MS)
        assert "loras: loras" not in panel.locator(".loras-field").inner_text().lower()
    finally:
        field.fill("")
