"""The OpenAI Images API, driven by the official `openai` SDK with only `base_url` changed."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import requests
from conftest import EXAMPLE_BIRD, image_at
from PIL import Image

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def sdk(base_url):
    return openai.OpenAI(base_url=base_url + "v1", api_key="not-needed-locally")


def test_generate_returns_urls_of_images_in_the_requested_size(sdk):
    response = sdk.images.generate(model="flux.1-dev", prompt="a lighthouse at dusk", size="512x384", n=2,
                                   extra_body={**FAST, "seed": 42})
    assert len(response.data) == 2
    images = [image_at(item.url) for item in response.data]
    assert [image.size for image in images] == [(512, 384)] * 2
    assert all(image.format == "PNG" for image in images)
    assert response.data[0].revised_prompt == "a lighthouse at dusk"
    assert response.model_extra["seed"] == 42 and response.model_extra["has_nsfw_concepts"] == [False, False]


def test_generate_b64_json_in_the_format_asked_for(sdk):
    response = sdk.images.generate(model="black-forest-labs/FLUX.1-dev", prompt="a lighthouse", size="16:9",
                                   response_format="b64_json", output_format="webp", output_compression=70,
                                   extra_body={**FAST, "seed": 1})
    image = Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))
    assert image.format == "WEBP" and image.size == (1360, 768)  # 16:9 at about one megapixel


def test_same_seed_same_image_through_the_sdk(sdk):
    def one(seed):
        data = sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", response_format="b64_json",
                                   extra_body={**FAST, "seed": seed}).data[0].b64_json
        return Image.open(io.BytesIO(base64.b64decode(data))).tobytes()  # pixels; metadata differs per request

    assert one(9) == one(9) != one(10)


def test_edit_runs_kontext_on_the_uploaded_image(sdk):
    with open(EXAMPLE_BIRD, "rb") as image_file:
        response = sdk.images.edit(model="flux.1-kontext-dev", image=image_file,
                                   prompt="Exact same bluebird, now perched on a cloud in outer space",
                                   extra_body={**FAST, "seed": 3})
    assert image_at(response.data[0].url).size == (1024, 1024)  # Kontext's resolution for a square input


def test_edit_with_the_dev_model_is_image_to_image(sdk):
    with open(EXAMPLE_BIRD, "rb") as image_file:
        response = sdk.images.edit(model="flux.1-dev", image=image_file, prompt="a red bird", size="256x256",
                                   extra_body={**FAST, "strength": 0.6, "seed": 3})
    assert image_at(response.data[0].url).size == (256, 256)


def test_models_lists_the_three_models(sdk):
    assert {model.id for model in sdk.models.list()} == {"flux.1-dev", "flux.1-kontext-dev", "flux.1-redux-dev"}


@pytest.mark.parametrize("kwargs, param, words", [
    ({"n": 9}, "n", "n must be an integer from 1 to 4, got 9"),
    ({"size": "1024x100"}, "size", "size: height must be an integer from 256 to 2048, got 100"),
    ({"size": "huge"}, "size", 'size must be "WxH"'),
    ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps", "from 1 to 50, got 0"),
    ({"extra_body": {"guidance_scale": 99}}, "guidance_scale", "from 0 to 20, got 99"),
])
def test_bad_values_are_400_naming_the_parameter(sdk, kwargs, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="flux.1-dev", prompt="a fox", **kwargs)
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param and words in refused.value.body["message"]


def test_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.images.generate(model="dall-e-3", prompt="a fox")
    assert "Unknown model 'dall-e-3'" in refused.value.body["message"]


def test_empty_prompt_and_missing_image_are_refused(sdk, base_url):
    with pytest.raises(openai.BadRequestError, match="prompt is required"):
        sdk.images.generate(model="flux.1-dev", prompt="  ")
    response = requests.post(base_url + "v1/images/edits", data={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_edit_with_a_mask_inpaints_where_the_mask_is_transparent(sdk, tmp_path):
    import numpy as np

    photo = Image.open(EXAMPLE_BIRD).convert("RGB").resize((256, 256))
    photo.save(tmp_path / "photo.png")
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 128, 256))  # OpenAI's convention: transparent is edited
    mask.save(tmp_path / "mask.png")
    with open(tmp_path / "photo.png", "rb") as image, open(tmp_path / "mask.png", "rb") as mask_file:
        response = sdk.images.edit(model="flux.1-dev", image=image, mask=mask_file, prompt="a red sky",
                                   response_format="b64_json", extra_body={**FAST, "seed": 4})
    edited = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json))).convert("RGB"))
    kept = np.asarray(photo)
    assert edited.shape == (256, 256, 3)
    assert np.array_equal(edited[:, 128:], kept[:, 128:])  # the opaque half is the input's
    assert np.abs(edited[:, :100].astype(int) - kept[:, :100]).mean() > 10
    opaque = io.BytesIO()
    Image.new("RGBA", (256, 256), (0, 0, 0, 255)).save(opaque, format="PNG")
    with open(tmp_path / "photo.png", "rb") as image, pytest.raises(openai.BadRequestError, match="no transparent"):
        sdk.images.edit(model="flux.1-dev", image=image, mask=("mask.png", opaque.getvalue()), prompt="x")


# -- seed 002's gateway parameters ------------------------------------------------------------

@pytest.mark.parametrize("values, size", [
    ({"size": "1024x768", "aspect_ratio": "1:1", "resolution": "2K"}, (1024, 768)),  # WxH always wins
    ({"size": "16:9", "aspect_ratio": "1:1"}, (1360, 768)),  # W:H is the aspect ratio, and wins over it
    ({"aspect_ratio": "16:9"}, (1360, 768)),  # a shape at the default scale, 1K
    ({"aspect_ratio": "1:1", "resolution": "1K"}, (1024, 1024)),
    ({"aspect_ratio": "1:1", "resolution": "0.5K"}, (512, 512)),
    ({"aspect_ratio": "16:9", "resolution": "4K"}, (2048, 1152)),  # 4K is beyond the range: 2K, fitted
    ({"aspect_ratio": "1:1", "resolution": "0.25"}, (512, 512)),  # a megapixel tier
    ({"aspect_ratio": "1:1", "megapixels": "1"}, (1024, 1024)),  # Replicate's megapixels
    ({"aspect_ratio": "1:1", "resolution": "3K"}, (2048, 2048)),  # the nearest tier
    ({"aspect_ratio": "7:1"}, (2048, 288)),
    ({"aspect_ratio": "20:1"}, (2048, 256)),  # clamped to the most the range allows, 8:1
    ({"resolution": "0.5K"}, (576, 432)),  # a scale keeps the default shape, 4:3
])
def test_size_parameters_map_onto_sizes_on_the_grid(values, size):
    from rest.openai_sizes import output_size

    mapped = output_size(values, (1024, 768))
    assert (mapped["width"], mapped["height"]) == size


def test_no_size_parameters_leave_the_routes_default():
    from rest.openai_sizes import output_size

    assert output_size({}, (1024, 768)) == output_size({"size": "auto"}, (1024, 768)) == {}


def b64_image(response) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))


def parameters(image: Image.Image) -> dict:
    from pipelines.outputs.metadata import read_parameters

    return read_parameters(image)


@pytest.mark.parametrize("extra, size", [
    ({"resolution": "0.25K", "aspect_ratio": "4:3"}, (352, 256)),  # fitted: each side at least 256
    ({"megapixels": "0.25", "aspect_ratio": "9:16"}, (384, 672)),
    ({"resolution": "0.5K"}, (576, 432)),
])
def test_resolution_aspect_ratio_and_megapixels_through_the_sdk(sdk, extra, size):
    response = sdk.images.generate(model="flux.1-dev", prompt="a fox", response_format="b64_json",
                                   extra_body={"num_inference_steps": 1, "seed": 2, **extra})
    assert b64_image(response).size == size and response.size == "{}x{}".format(*size)


def test_an_edit_at_a_resolution_keeps_the_inputs_shape(sdk):
    with open(EXAMPLE_BIRD, "rb") as bird:  # square
        response = sdk.images.edit(model="flux.1-dev", image=bird, prompt="a red bird", response_format="b64_json",
                                   extra_body={**FAST, "resolution": "0.25K", "seed": 3})
    assert b64_image(response).size == (256, 256)


@pytest.mark.parametrize("extra, recorded", [
    ({"cfg_scale": 5.5}, {"guidance_scale": 5.5}),
    ({"cfg_scale": 5.5, "guidance_scale": 2}, {"guidance_scale": 2}),  # FLUX's own name wins
    ({"go_fast": False}, {"step_cache": "off"}),
    ({"go_fast": True}, {"step_cache": "auto"}),
    ({"acceleration": "high"}, {"step_cache": "first_block"}),
    ({"acceleration": "regular", "go_fast": True}, {"step_cache": "off"}),  # acceleration wins
    ({"output_quality": 35}, {"output_quality": 35}),
    ({"sync_mode": True}, {}),  # b64_json
])
def test_gateway_parameters_reach_the_request(sdk, extra, recorded):
    response = sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", output_format="jpeg",
                                   extra_body={"num_inference_steps": 2, "seed": 4, **extra})
    answered_b64 = response.data[0].b64_json is not None
    found = parameters(b64_image(response) if answered_b64 else image_at(response.data[0].url))
    assert {name: found[name] for name in recorded} == recorded
    assert answered_b64 == ("sync_mode" in extra)


@pytest.mark.parametrize("extra, param, words", [
    ({"cfg_scale": 99}, "cfg_scale", "cfg_scale must be a number from 0 to 20, got 99"),
    ({"output_quality": 0}, "output_quality", "output_quality must be an integer from 1 to 100, got 0"),
    ({"output_compression": 0}, "output_compression", "output_compression must be an integer from 1 to 100"),
    ({"acceleration": "ludicrous"}, "acceleration", "acceleration must be one of none, regular, high"),
    ({"resolution": "huge"}, "resolution", "this server's tiers: 0.25K, 0.5K, 1K, 2K"),
    ({"megapixels": "-1"}, "megapixels", 'megapixels must be a tier such as "1K"'),
    ({"aspect_ratio": "wide"}, "aspect_ratio", 'aspect_ratio must be an aspect ratio "W:H"'),
    ({"size": "1000x1000"}, "size", "size: width must be a multiple of 16, got 1000 (each side: 256 to 2048)"),
    ({"size": "4096x1024"}, "size", "size: width must be an integer from 256 to 2048, got 4096"),
    ({"output_format": "bmp"}, "output_format", "output_format must be one of png, jpeg, webp, gif, avif"),
])
def test_bad_gateway_parameters_are_400_naming_them(sdk, extra, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.generate(model="flux.1-dev", prompt="a fox", extra_body=extra)
    assert refused.value.body["param"] == param and words in refused.value.body["message"]


@pytest.mark.parametrize("output_format, pillow_format", [("gif", "GIF"), ("avif", "AVIF")])
def test_gif_and_avif_are_written_and_served_as_such(sdk, output_format, pillow_format):
    response = sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", output_format=output_format,
                                   extra_body={**FAST, "seed": 6})
    served = requests.get(response.data[0].url, timeout=30)
    assert served.headers["content-type"] == f"image/{output_format}"
    image = Image.open(io.BytesIO(served.content))
    assert image.format == pillow_format and image.size == (256, 256)
    assert response.output_format == output_format
    png = sdk.images.generate(model="flux.1-dev", prompt="a fox", size="256x256", response_format="b64_json",
                              extra_body={**FAST, "seed": 6})
    difference = [abs(a - b) for a, b in zip(image.convert("RGB").tobytes(), b64_image(png).convert("RGB").tobytes(),
                                             strict=True)]
    assert sum(difference) / len(difference) < 12  # the same image, in a lossy format
