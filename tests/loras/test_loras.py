"""LoRAs through the app's API: load, apply by name with weights, several at once, unload; the
base model never reloads and its outputs come back bit for bit."""

from __future__ import annotations

import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import EXAMPLE_LAKE, FAST, call, pixels, result_images

REQUEST = {"prompt": "a lighthouse", **FAST, "seed": 9, "enable_safety_checker": False}
STYLE, KOHYA = "tiny-style-lora", "tiny-kohya-style.safetensors"


def t2i(client, **kwargs):
    return pixels(result_images(call(client, "/text_to_image", **{**REQUEST, **kwargs}))[0])


@pytest.fixture
def loaded(client):
    """Loads LoRAs by source for one test and unloads whatever the test left loaded."""

    def load(source, name=None):
        return client.predict(source=source, name=name, api_name="/load_lora")

    yield load
    for name in client.predict(api_name="/status")["loras"]:
        client.predict(name=name, api_name="/unload_lora")


def test_a_lora_applies_by_name_and_weight_and_unloads_to_the_exact_base(client, loaded):
    base = t2i(client)
    listed = loaded(STYLE)
    assert list(listed) == ["tiny-style-lora"] and listed["tiny-style-lora"]["rank"] > 0
    assert np.array_equal(t2i(client), base)  # loaded but not asked for: no effect
    styled = t2i(client, loras="tiny-style-lora:1")
    assert np.abs(styled - base).mean() > 1
    assert np.array_equal(t2i(client, loras="tiny-style-lora:0"), base)
    half = t2i(client, loras="tiny-style-lora:0.5")
    assert not np.array_equal(half, styled) and not np.array_equal(half, base)
    client.predict(name="tiny-style-lora", api_name="/unload_lora")
    assert np.array_equal(t2i(client), base)
    status = client.predict(api_name="/status")
    assert status["loras"] == {} and status["components"]["transformer"]["load_count"] == 1


def test_two_loras_at_once_and_in_every_dev_mode(client, loaded):
    base = t2i(client)
    loaded(STYLE)
    loaded(KOHYA, name="kohya")  # it has a CLIP text-encoder LoRA too
    one = t2i(client, loras="tiny-style-lora:1")
    both = t2i(client, loras="tiny-style-lora:1, kohya:0.8")
    assert not np.array_equal(one, both)
    result = call(client, "/text_to_image", **REQUEST, loras="tiny-style-lora:1, kohya:0.8")
    assert result[2]["loras"] == "tiny-style-lora:1, kohya:0.8"  # as the field takes it back
    for api_name, extra in (("/image_to_image", {"image": EXAMPLE_LAKE}), ("/redux_variation", {"image": EXAMPLE_LAKE}),
                            ("/control", {"image": EXAMPLE_LAKE})):
        with_lora = call(client, api_name, **{**REQUEST, **extra}, loras="kohya:1")
        without = call(client, api_name, **{**REQUEST, **extra})
        assert not np.array_equal(pixels(result_images(with_lora)[0]), pixels(result_images(without)[0])), api_name
    for name in ("tiny-style-lora", "kohya"):
        client.predict(name=name, api_name="/unload_lora")
    assert np.array_equal(t2i(client), base)  # the text encoder is back as it was, too


def test_a_text_encoder_lora_stays_out_of_kontext(client, loaded):
    """CLIP is shared with Kontext, which takes no LoRAs: a dev request's text-encoder LoRA
    must be off again when Kontext runs after it."""
    kontext = {**REQUEST, "image": EXAMPLE_LAKE, "prompt": "make it red"}
    before = pixels(result_images(call(client, "/kontext_edit", **kontext))[0])
    loaded(KOHYA, name="kohya")  # it has a CLIP text-encoder LoRA
    t2i(client, loras="kohya:1")
    assert np.array_equal(pixels(result_images(call(client, "/kontext_edit", **kontext))[0]), before)


def test_lora_mistakes_name_the_field(client, loaded):
    with pytest.raises(Exception, match=r"loras: 'nope' is not loaded: load it in the LoRAs tab .*\(loaded: none yet"):
        t2i(client, loras="nope:1")
    loaded(STYLE)
    with pytest.raises(Exception, match="the weight of 'tiny-style-lora' must be a number from -4 to 4, got 9"):
        t2i(client, loras="tiny-style-lora:9")
    with pytest.raises(Exception, match="a LoRA named 'tiny-style-lora' is loaded already"):
        client.predict(source=STYLE, name=None, api_name="/load_lora")
    with pytest.raises(Exception, match="local LoRAs are loaded only from the LoRA folders"):
        client.predict(source="/etc/passwd", name="x", api_name="/load_lora")
    with pytest.raises(Exception, match="nobody/no-such-lora: no network to the Hugging Face Hub"):
        client.predict(source="nobody/no-such-lora", name="x", api_name="/load_lora")
    with pytest.raises(Exception, match="'ghost' is not loaded"):
        client.predict(name="ghost", api_name="/unload_lora")
    assert np.array_equal(t2i(client), t2i(client))  # and the server still serves


@pytest.fixture
def lora_server(family):
    """A local HTTP server for LoRA URLs, serving the demo family's LoRA folder."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(family["loras"])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_lora_urls_follow_the_image_url_rules(client, playground, loaded, lora_server, tmp_path):
    url = f"{lora_server}/{KOHYA}"
    with pytest.raises(Exception, match="127.0.0.1, a private, loopback or link-local address"):
        client.predict(source=url, name="from_url", api_name="/load_lora")
    policy = playground.lora_sources
    saved = policy.fetch.allow_private
    policy.fetch.allow_private = True  # as --allow-private-urls does
    try:
        loaded(url, name="from_url")
    finally:
        policy.fetch.allow_private = saved
    status = client.predict(api_name="/status")["loras"]["from_url"]
    assert status["source"] == url and status["file"].endswith(".safetensors")
    assert not np.array_equal(t2i(client, loras="from_url:1"), t2i(client))
    policy.fetch.allow_private = True
    try:  # without a name, it is named after the URL's file, not the download's hash
        assert list(loaded(f"{lora_server}/{KOHYA}?v=2")) == ["from_url", "tiny-kohya-style"]
    finally:
        policy.fetch.allow_private = saved


def test_local_files_outside_the_folders_are_refused_even_through_links(client, playground, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(playground.lora_sources.folders[-1] / KOHYA, outside)
    link = playground.lora_sources.folders[-1] / "link.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(Exception, match="local LoRAs are loaded only from the LoRA folders"):
            client.predict(source="link.safetensors", name="linked", api_name="/load_lora")
    finally:
        link.unlink()


def test_fal_lora_routes_load_loras_by_path_and_inpaint(base_url, client):
    import base64
    import io

    import requests
    from PIL import Image

    body = {"prompt": "a lighthouse", "image_size": {"width": 256, "height": 256}, "num_inference_steps": 2,
            "seed": 9, "enable_safety_checker": False, "output_format": "png", "sync_mode": True}

    def fal(route, **extra):
        response = requests.post(f"{base_url}fal-ai/{route}", json={**body, **extra}, timeout=300)
        assert response.status_code == 200, response.text
        data = response.json()["images"][0]["url"].split(",", 1)[1]
        return pixels(Image.open(io.BytesIO(base64.b64decode(data))))

    try:
        plain = fal("flux-lora")
        styled = fal("flux-lora", loras=[{"path": STYLE, "scale": 1.0}])  # loaded on first use
        assert not np.array_equal(plain, styled)
        assert np.array_equal(styled, fal("flux-lora", loras=[{"path": STYLE, "scale": 1.0}]))
        assert "tiny-style-lora" in client.predict(api_name="/status")["loras"]

        def data_uri(image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

        photo = Image.open(EXAMPLE_LAKE).convert("RGB").resize((256, 256))
        mask = Image.new("L", (256, 256), 0)
        mask.paste(255, (0, 0, 128, 128))
        painted = fal("flux-lora/inpainting", image_url=data_uri(photo), mask_url=data_uri(mask))
        keep = np.asarray(mask) == 0
        assert np.array_equal(painted[keep], pixels(photo)[keep])
        response = requests.post(f"{base_url}fal-ai/flux-lora", json={**body, "loras": [{"path": "/etc/passwd"}]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "loras"]
    finally:
        for name in client.predict(api_name="/status")["loras"]:
            client.predict(name=name, api_name="/unload_lora")
