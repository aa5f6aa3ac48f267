"""Structural control through the app's API: equal to plain diffusers FluxControlPipeline, the
control map returned, and the base transformer exactly restored for the other modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLE_LAKE, FAST, call, pixels, result_images
from diffusers import FluxControlPipeline
from PIL import Image

CONTROL = {**FAST, "seed": 11, "enable_safety_checker": False, "num_inference_steps": 3}


def control(client, **kwargs):
    return call(client, "/control", image=EXAMPLE_LAKE, prompt="a castle on a hill", **{**CONTROL, **kwargs})


@pytest.fixture(scope="module")
def plain_control(family):
    """Plain diffusers: the control pipeline from the dev folder, with a control LoRA loaded."""

    def run(lora: str, control_image: Image.Image, guidance_scale: float) -> Image.Image:
        pipe = FluxControlPipeline.from_pretrained(family["dev"], torch_dtype=torch.float32, local_files_only=True)
        pipe.load_lora_weights(str(family[lora]), adapter_name="control")
        return pipe(prompt="a castle on a hill", control_image=control_image, width=256, height=256,
                    num_inference_steps=3, guidance_scale=guidance_scale,
                    generator=torch.Generator("cpu").manual_seed(11)).images[0]

    return run


@pytest.mark.parametrize(("control_type", "lora", "guidance"), [("canny", "canny_lora", 30.0),
                                                                 ("depth", "depth_lora", 10.0)])
def test_control_equals_plain_diffusers(client, plain_control, control_type, lora, guidance):
    result = control(client, control_type=control_type)
    (out,) = result_images(result)
    control_map = Image.open(result[3]).convert("RGB")
    assert out.size == control_map.size == (256, 256)
    assert result[2]["guidance_scale"] == guidance and result[2]["control_type"] == control_type
    expected = plain_control(lora, control_map, guidance)
    assert np.array_equal(pixels(out), pixels(expected))


def test_the_canny_map_is_opencvs_canny_at_the_output_size(client):
    import cv2

    result = control(client, canny_low_threshold=80, canny_high_threshold=160)
    source = Image.open(EXAMPLE_LAKE).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    expected = cv2.Canny(np.asarray(source.convert("L")), 80, 160)
    control_map = np.asarray(Image.open(result[3]).convert("L"))
    assert np.array_equal(control_map, expected) and 0 < (expected > 0).mean() < 0.5


def test_a_ready_map_is_used_as_given(client, tmp_path):
    edges = Image.new("RGB", (256, 256), "black")
    edges.paste((255, 255, 255), (100, 0, 104, 256))
    edges.save(tmp_path / "edges.png")
    result = call(client, "/control", image=str(tmp_path / "edges.png"), prompt="a tower", preprocess=False,
                  **CONTROL)
    assert np.array_equal(pixels(Image.open(result[3])), pixels(edges))


def test_control_checks_its_fields(client):
    with pytest.raises(Exception, match="canny_low_threshold: must not be above canny_high_threshold"):
        control(client, canny_low_threshold=200, canny_high_threshold=100)
    with pytest.raises(Exception, match="control_type: must be one of canny, depth; got 'pose'"):
        control(client, control_type="pose")


def test_text_to_image_is_unchanged_after_control_and_nothing_reloads(client):
    """The control LoRAs widen the transformer's input; other modes get the base one back."""
    request = {"prompt": "a lighthouse", **FAST, "seed": 4, "enable_safety_checker": False}
    before = pixels(result_images(call(client, "/text_to_image", **request))[0])
    control(client, control_type="canny")
    after_canny = pixels(result_images(call(client, "/text_to_image", **request))[0])
    control(client, control_type="depth")
    call(client, "/image_to_image", image=EXAMPLE_LAKE, prompt="x", **FAST, seed=1)
    after_depth = pixels(result_images(call(client, "/text_to_image", **request))[0])
    assert np.array_equal(before, after_canny) and np.array_equal(before, after_depth)
    status = client.predict(api_name="/status")
    assert status["components"]["transformer"]["load_count"] == 1
    assert all(entry["load_count"] == 1 for entry in status["components"].values())
    assert status["pipelines"]["control"]["components"]["transformer"] == "transformer"
    assert status["adapters"]["control"] is None and status["adapters"]["rebuilds"] >= 3
    assert status["resident_bytes"] == status["unique_resident_bytes"]
