"""Every bad value of every field gets a clear error naming the field and what it accepts,
before any accelerator time is spent; the next good request succeeds."""

from __future__ import annotations

import pytest
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, FAST, call, result_images
from gradio_client.exceptions import ValidationError

T2I = ("/text_to_image", {"prompt": "a fox"})
I2I = ("/image_to_image", {"image": EXAMPLE_LAKE, "prompt": "a fox"})
KONTEXT = ("/kontext_edit", {"image": EXAMPLE_BIRD, "prompt": "a fox"})
REDUX = ("/redux_variation", {"image": EXAMPLE_BIRD})

# (endpoint, bad values, field, words the message must contain)
CASES = [
    (T2I, {"prompt": ""}, "prompt", "prompt: is required"),
    (T2I, {"prompt": "   \n "}, "prompt", "prompt: is required"),
    (T2I, {"prompt": "x" * 4001}, "prompt", "at most 4000 characters"),
    (KONTEXT, {"prompt": " "}, "prompt", "prompt: is required"),
    (I2I, {"prompt": ""}, "prompt", "prompt: is required"),
    (T2I, {"num_inference_steps": 0}, "num_inference_steps", "from 1 to 50, got 0"),
    (T2I, {"num_inference_steps": 51}, "num_inference_steps", "from 1 to 50, got 51"),
    (REDUX, {"num_inference_steps": 2.5}, "num_inference_steps", "whole number"),
    (T2I, {"guidance_scale": -0.5}, "guidance_scale", "from 0 to 20, got -0.5"),
    (KONTEXT, {"guidance_scale": 21}, "guidance_scale", "from 0 to 20, got 21"),
    (T2I, {"seed": -2}, "seed", "from -1 to 4294967295"),
    (T2I, {"seed": 2**32}, "seed", "from -1 to 4294967295"),
    (T2I, {"seed": "abc"}, "seed", "seed: must be an integer"),
    (T2I, {"num_images": 0}, "num_images", "from 1 to 4, got 0"),
    (I2I, {"num_images": 5}, "num_images", "from 1 to 4, got 5"),
    (T2I, {"output_format": "gif"}, "output_format", "one of png, jpeg, webp"),
    (T2I, {"output_quality": 0}, "output_quality", "from 1 to 100"),
    (T2I, {"output_quality": 101}, "output_quality", "from 1 to 100"),
    (T2I, {"true_cfg_scale": 0.5}, "true_cfg_scale", "from 1 to 10"),
    (I2I, {"strength": 0}, "strength", "from 0.01 to 1, got 0"),
    (I2I, {"strength": 1.5}, "strength", "from 0.01 to 1, got 1.5"),
    (REDUX, {"prompt_embeds_scale": 3}, "prompt_embeds_scale", "from 0 to 2"),
    (REDUX, {"pooled_prompt_embeds_scale": -1}, "pooled_prompt_embeds_scale", "from 0 to 2"),
    (T2I, {"image_size": "huge"}, "image_size", "one of square_hd, square"),
    (T2I, {"image_size": "match_input"}, "image_size", "image_size: must be one of"),
    (T2I, {"image_size": "custom", "width": 1000}, "width", "multiple of 16, got 1000"),
    (T2I, {"image_size": "custom", "height": 4096}, "height", "from 256 to 2048, got 4096"),
    (KONTEXT, {"image_size": "custom", "width": 128}, "width", "from 256 to 2048, got 128"),
    (I2I, {"image": None}, "image", "image: is required"),
    (REDUX, {"image": None}, "image", "image: is required"),
    (T2I, {"loras": "nope:1"}, "loras", "'nope'"),
]


@pytest.mark.parametrize("endpoint, bad, field, words", CASES, ids=[f"{c[0][0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_bad_value_is_refused_naming_the_field(client, endpoint, bad, field, words):
    api_name, good = endpoint
    with pytest.raises(ValidationError) as refused:
        call(client, api_name, **{**good, **FAST, **bad})
    message = str(refused.value)
    assert f"- {field}: " in message and words in message, message
    assert f"- {field}: {field}" not in message, message  # gradio_client names the field; the message does not again


def test_several_bad_fields_are_reported_together(client):
    with pytest.raises(ValidationError) as refused:
        call(client, "/text_to_image", prompt="", num_inference_steps=99, output_format="bmp")
    message = str(refused.value)
    assert "3 parameter(s) failed validation" in message
    for field in ("prompt", "num_inference_steps", "output_format"):
        assert f"- {field}: " in message


@pytest.mark.parametrize("content, words", [
    (b"this is not an image", "could not be read as an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be read as an image"),
])
def test_unreadable_image_is_refused(client, tmp_path, content, words):
    bad = tmp_path / "broken.png"
    bad.write_bytes(content)
    with pytest.raises(ValidationError, match=words):
        call(client, "/kontext_edit", image=str(bad), prompt="x", **FAST)


def test_tiny_image_is_refused(client, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 300), "white").save(tmp_path / "tiny.png")
    with pytest.raises(ValidationError, match="image: is 40x300; each side must be at least 64 px"):
        call(client, "/image_to_image", image=str(tmp_path / "tiny.png"), prompt="x", **FAST)


def test_next_good_request_succeeds_after_every_refusal(client):
    for endpoint, bad, _, _ in CASES[:5]:
        with pytest.raises(ValidationError):
            call(client, endpoint[0], **{**endpoint[1], **FAST, **bad})
        for api_name, good in (T2I, KONTEXT):
            images = result_images(call(client, api_name, **good, **FAST, seed=2))
            assert images[0].size == (256, 256)
