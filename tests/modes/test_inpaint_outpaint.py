"""Inpainting and outpainting through the app's API: sizes, the mask respected, errors named,
and FLUX.1-Fill-dev used when it is configured."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EXAMPLE_BIRD, FAST, pixels, result_images, running_server
from gradio_client import Client, handle_file
from PIL import Image


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 256x256 input, so the output needs no resizing and pixels compare one to one."""
    path = tmp_path_factory.mktemp("inpaint") / "photo.png"
    Image.open(EXAMPLE_BIRD).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS).save(path)
    return path


def square_mask(path, box, size=(256, 256)):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask.save(path)
    return mask


def inpaint(client, **kwargs):
    options = {"prompt": "a red balloon", "num_inference_steps": 2, "seed": 5, "enable_safety_checker": False}
    return client.predict(api_name="/inpaint", **{**options, **kwargs})


def test_inpaint_repaints_the_mask_and_keeps_every_other_pixel(client, photo, tmp_path):
    mask = square_mask(tmp_path / "mask.png", (64, 96, 192, 224))
    result = inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None},
                     mask_image=handle_file(str(tmp_path / "mask.png")), mask_blur=0)
    (out,) = result_images(result)
    assert out.size == (256, 256)
    before, after = pixels(Image.open(photo)), pixels(out)
    outside = np.asarray(mask) == 0
    assert np.array_equal(before[outside], after[outside])  # exactly: the input's own pixels
    assert np.abs(before[~outside] - after[~outside]).mean() > 10  # and the masked area repainted
    assert result[2]["mode"] == "inpaint" and result[2]["strength"] == 0.85 and "mask" not in result[2]


def test_a_painted_layer_is_the_mask_and_the_feather_stays_inside_it(client, photo, tmp_path):
    layer = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (32, 32, 128, 128))  # what a brush stroke leaves in the editor
    layer.save(tmp_path / "layer.png")
    editor = {"background": handle_file(str(photo)), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    (out,) = result_images(inpaint(client, image=editor, mask_blur=8))
    before, after = pixels(Image.open(photo)), pixels(out)
    painted = np.zeros((256, 256), bool)
    painted[32:128, 32:128] = True
    assert np.array_equal(before[~painted], after[~painted])
    assert np.abs(before[48:112, 48:112] - after[48:112, 48:112]).mean() > 10


def test_inpaint_without_a_mask_or_with_an_empty_one_names_the_mask(client, photo, tmp_path):
    with pytest.raises(Exception, match="- image: has nothing painted on it: paint over what to change, or upload "
                                        "a mask_image"):
        inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None})
    square_mask(tmp_path / "empty.png", (0, 0, 0, 0))
    with pytest.raises(Exception, match="mask_image: is empty"):
        inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None},
                mask_image=handle_file(str(tmp_path / "empty.png")))


def outpaint(client, image, **kwargs):
    return client.predict(api_name="/outpaint", image=handle_file(str(image)), prompt="a wide landscape",
                          num_inference_steps=2, seed=3, enable_safety_checker=False, **kwargs)


def test_outpaint_extends_the_canvas_and_keeps_the_input(client, photo):
    result = outpaint(client, photo, expand_right=64, expand_top=32, mask_blur=0)
    (out,) = result_images(result)
    assert out.size == (320, 288)
    assert np.array_equal(pixels(out)[32:, :256], pixels(Image.open(photo)))
    assert result[2]["width"] == 320 and result[2]["expand_right"] == 64


@pytest.mark.parametrize(("size", "options", "expected"), [
    ((250, 260), {"expand_left": 10}, (272, 272)),  # rounded up to multiples of 16 on the growing sides
    ((256, 256), {"aspect_ratio": "16:9"}, (464, 256)),
    ((256, 256), {"aspect_ratio": "9:16"}, (256, 464)),
])
def test_outpaint_sizes_are_multiples_of_16(client, tmp_path, size, options, expected):
    image = tmp_path / "in.png"
    Image.open(EXAMPLE_BIRD).convert("RGB").resize(size).save(image)
    (out,) = result_images(outpaint(client, image, **options))
    assert out.size == expected and out.width % 16 == out.height % 16 == 0


def test_outpaint_grows_to_16_9_unless_margins_are_given(client, photo):
    """The default aspect ratio applies to a request without margins; margins given replace it."""
    assert result_images(outpaint(client, photo))[0].size == (464, 256)
    right = outpaint(client, photo, expand_right=64)
    assert result_images(right)[0].size == (320, 256) and right[2]["aspect_ratio"] == "none"


def test_outpaint_asks_for_one_way_to_extend(client, photo):
    with pytest.raises(Exception, match="- aspect_ratio: choose where to extend the image: an aspect ratio other "
                                        r"than none, or a margin \(expand_left, expand_right, expand_top or "
                                        r"expand_bottom\) above 0"):
        outpaint(client, photo, aspect_ratio="none")
    with pytest.raises(Exception, match=r"- aspect_ratio: give either an aspect ratio or margins \(expand_left, "
                                        r"expand_right, expand_top, expand_bottom\), not both"):
        outpaint(client, photo, expand_left=32, aspect_ratio="1:1")
    with pytest.raises(Exception, match="- expand_left: must be an integer from 0 to 1024, got 5000"):
        outpaint(client, photo, expand_left=5000)


def test_with_fill_configured_inpainting_runs_flux_fill(family, tmp_path, photo):
    """FLUX.1-Fill-dev's own transformer and FluxFillPipeline, with BFL's Fill defaults."""
    with running_server(["--fill-model", "demo"], tmp_path / "out") as (_, _playground, url):
        client = Client(url, verbose=False)
        mask = square_mask(tmp_path / "mask.png", (0, 0, 128, 256))
        result = inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None},
                         mask_image=handle_file(str(tmp_path / "mask.png")), mask_blur=0)
        (out,) = result_images(result)
        keep = np.asarray(mask) == 0
        assert np.array_equal(pixels(out)[keep], pixels(Image.open(photo))[keep])
        assert result[2]["guidance_scale"] == 30.0 and result[2]["num_inference_steps"] == 2
        assert "FLUX.1-Fill-dev" in result[2]["model"]
        status = client.predict(api_name="/status")
        assert status["pipelines"]["fill"]["class"] == "FluxFillPipeline"
        assert status["pipelines"]["fill"]["components"]["transformer"] == "fill_transformer"
        assert status["components"]["fill_transformer"]["load_count"] == 1
        # LoRAs are for the dev transformer; Fill refuses them by name.
        with pytest.raises(Exception, match="loras: cannot be used here"):
            inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None},
                    mask_image=handle_file(str(tmp_path / "mask.png")), loras="anything:1")


def test_fast_settings_apply_to_inpaint_sizes(client, photo, tmp_path):
    """image_size works in inpaint as elsewhere: the image and its mask are resized together."""
    square_mask(tmp_path / "mask.png", (0, 0, 64, 64))
    result = inpaint(client, image={"background": handle_file(str(photo)), "layers": [], "composite": None},
                     mask_image=handle_file(str(tmp_path / "mask.png")), **{**FAST, "width": 320})
    assert result_images(result)[0].size == (320, 256)
