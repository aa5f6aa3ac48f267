"""Every endpoint through gradio_client against the app launched in-process (demo family)."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import ValidationError
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, FAST, call, pixels, result_images

MODES = {
    "/text_to_image": {"prompt": "a red fox in the snow"},
    "/image_to_image": {"image": EXAMPLE_LAKE, "prompt": "a winter lake", "strength": 0.9},
    "/kontext_edit": {"image": EXAMPLE_BIRD, "prompt": "make the bird red"},
    "/redux_variation": {"image": EXAMPLE_BIRD},
}


@pytest.mark.parametrize("api_name", MODES)
def test_each_endpoint_returns_the_requested_size_and_count(client, api_name):
    result = call(client, api_name, **MODES[api_name], **{**FAST, "width": 320, "height": 256},
                  num_images=2, seed=11)
    images = result_images(result)
    assert [image.size for image in images] == [(320, 256), (320, 256)]
    seed, info = result[1], result[2]
    assert seed == 11 and info["seeds"] == [11, 12]
    assert info["mode"] == api_name.strip("/")
    assert (info["width"], info["height"], info["num_inference_steps"]) == (320, 256, 2)
    assert "demo" in info["model"] and info["model"] in result[0][0]["caption"]
    assert info["timings"]["executed_ms"] > 0 and info["timings"]["queued_ms"] >= 0
    # Real content: not a flat image, and the two images differ.
    assert all(pixels(image).std() > 5 for image in images)
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1


@pytest.mark.parametrize("api_name", MODES)
def test_same_seed_same_pixels_other_seed_differs(client, api_name):
    first, again, other = (
        result_images(call(client, api_name, **MODES[api_name], **FAST, seed=seed))[0]
        for seed in (7, 7, 8)
    )
    assert np.array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1


def test_image_i_of_a_request_reproduces_alone_with_seed_plus_i(client):
    batch = result_images(call(client, "/text_to_image", prompt="a lighthouse", **FAST, num_images=3, seed=100))
    alone = result_images(call(client, "/text_to_image", prompt="a lighthouse", **FAST, seed=102))[0]
    assert np.array_equal(pixels(batch[2]), pixels(alone))


def test_random_seed_is_returned_and_reproduces_the_image(client):
    result = call(client, "/text_to_image", prompt="a lighthouse", **FAST, seed=-1)
    seed = result[1]
    assert 0 <= seed <= 2**32 - 1
    again = call(client, "/text_to_image", prompt="a lighthouse", **FAST, seed=seed)
    assert np.array_equal(pixels(result_images(result)[0]), pixels(result_images(again)[0]))


@pytest.mark.parametrize("output_format, pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_the_format_asked_for_is_the_format_delivered(client, output_format, pil_format):
    from PIL import Image

    result = call(client, "/text_to_image", prompt="a lighthouse", **FAST, seed=3, output_format=output_format)
    path = result[0][0]["image"]
    assert path.endswith("." + output_format)
    with Image.open(path) as image:
        assert image.format == pil_format


def test_output_quality_changes_lossy_files(client):
    import os

    sizes = [
        os.path.getsize(call(client, "/text_to_image", prompt="a lighthouse", **FAST, seed=3,
                             output_format="jpeg", output_quality=quality)[0][0]["image"])
        for quality in (10, 95)
    ]
    assert sizes[0] < sizes[1]


def test_preset_sizes(client):
    result = call(client, "/text_to_image", prompt="a lighthouse", num_inference_steps=1,
                  image_size="portrait_16_9", seed=1)
    assert result_images(result)[0].size == (576, 1024)


@pytest.mark.parametrize("api_name", MODES)
def test_explicit_width_and_height_win_over_any_preset(client, api_name):
    # No image_size (each mode has its own default preset), or a preset that says otherwise.
    plain = call(client, api_name, **MODES[api_name], num_inference_steps=1, width=384, height=256, seed=1)
    over = call(client, api_name, **MODES[api_name], num_inference_steps=1, width=384, height=256, seed=1,
                image_size="square_hd")
    assert result_images(plain)[0].size == result_images(over)[0].size == (384, 256)


@pytest.mark.parametrize("values, words", [
    ({"width": 384}, "- height: is required with width: give both, or neither to use image_size"),
    ({"width": 385, "height": 256}, "- width: must be a multiple of 16, got 385"),
    ({"width": 4096, "height": 256}, "- width: must be an integer from 256 to 2048, got 4096"),
])
def test_explicit_sizes_off_the_grid_or_alone_are_errors_naming_the_field(client, values, words):
    with pytest.raises(ValidationError) as refused:
        call(client, "/text_to_image", prompt="a fox", num_inference_steps=1, **values)
    assert words in str(refused.value)


@pytest.mark.parametrize(
    "api_name, image, expected",
    [
        ("/image_to_image", EXAMPLE_LAKE, (768, 512)),  # the input's own size, multiples of 16
        ("/kontext_edit", EXAMPLE_LAKE, (1248, 832)),  # Kontext's trained resolution nearest 3:2
        ("/kontext_edit", EXAMPLE_BIRD, (1024, 1024)),
        ("/redux_variation", EXAMPLE_LAKE, (1248, 832)),  # 3:2 at about one megapixel
    ],
)
def test_match_input_follows_the_input_image(client, api_name, image, expected):
    result = call(client, api_name, image=image, prompt="snow", num_inference_steps=1,
                  image_size="match_input", seed=1)
    assert result_images(result)[0].size == expected
    assert result[2]["input_image_size"] == list({EXAMPLE_LAKE: (768, 512), EXAMPLE_BIRD: (640, 640)}[image])


def test_api_page_lists_every_endpoint_with_snake_case_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/text_to_image", "/image_to_image", "/kontext_edit", "/redux_variation", "/inpaint",
                        "/outpaint", "/control", "/load_lora", "/unload_lora", "/status"}
    names = [p["parameter_name"] for p in api["/text_to_image"]["parameters"]]
    assert names == ["prompt", "negative_prompt", "true_cfg_scale", "image_size", "width", "height",
                     "num_inference_steps", "guidance_scale", "seed", "num_images", "output_format",
                     "output_quality", "enable_safety_checker", "live_preview", "loras", "step_cache"]
    kontext = [p["parameter_name"] for p in api["/kontext_edit"]["parameters"]]
    assert "loras" not in kontext  # Kontext has its own transformer; dev LoRAs do not apply
    outpaint = [p["parameter_name"] for p in api["/outpaint"]["parameters"]]
    assert "image_size" not in outpaint and "expand_left" in outpaint  # its size is the canvas
    required = {p["parameter_name"] for p in api["/redux_variation"]["parameters"] if not p["parameter_has_default"]}
    assert required == {"image"}
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/kontext_edit"]["parameters"]}
    assert defaults["guidance_scale"] == 2.5 and defaults["num_inference_steps"] == 28
    assert defaults["image_size"] == "match_input"


def test_safety_checker_in_the_playground(client, safety_threshold):
    safety_threshold(0.0)
    flagged = call(client, "/text_to_image", prompt="a fox", **FAST, seed=2)
    assert flagged[2]["has_nsfw_concepts"] == [True] and "flagged by the safety checker" in flagged[0][0]["caption"]
    assert result_images(flagged)[0].getextrema() == ((0, 0), (0, 0), (0, 0))
    unchecked = call(client, "/text_to_image", prompt="a fox", **FAST, seed=2, enable_safety_checker=False)
    assert unchecked[2]["has_nsfw_concepts"] == [False] and pixels(result_images(unchecked)[0]).std() > 5
    status = client.predict(api_name="/status")["safety_checker"]
    assert status["loaded"] and status["threshold"] == 0.0
