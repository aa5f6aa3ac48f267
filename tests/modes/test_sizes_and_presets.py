"""The pure functions behind sizes and the presets file."""

from __future__ import annotations

import pytest
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

from pipelines.errors import FieldError
from pipelines.imaging.images import fit_size, kontext_size, size_at_area
from pipelines.modes.parsing import parse_request
from presets import PRESETS


@pytest.mark.parametrize("size, expected", [
    ((768, 512), (768, 512)),
    ((1000, 750), (992, 736)),       # floored to multiples of 16
    ((4000, 3000), (2048, 1536)),    # scaled down into the limits, aspect kept
    ((300, 200), (384, 256)),        # scaled up so the short side reaches 256
    ((5000, 100), (2048, 256)),      # extreme aspect: clamped, never outside the limits
])
def test_fit_size(size, expected):
    assert fit_size(*size, min_side=256, max_side=2048, multiple=16) == expected


def test_size_at_area_keeps_aspect_near_the_area():
    width, height = size_at_area(1600, 900, 1024 * 1024, 16)
    assert width % 16 == height % 16 == 0
    assert abs(width / height - 16 / 9) < 0.02 and 0.95 < width * height / 1024**2 <= 1


@pytest.mark.parametrize("size", [(640, 640), (300, 200), (200, 300), (4000, 1000), (1, 5)])
def test_kontext_size_is_a_trained_resolution(size):
    assert kontext_size(*size) in PREFERRED_KONTEXT_RESOLUTIONS


def test_presets_sizes_are_valid_custom_sizes():
    for width, height in PRESETS.image_sizes.values():
        assert width % PRESETS.size_multiple == height % PRESETS.size_multiple == 0
        assert PRESETS.size_min <= min(width, height) and max(width, height) <= PRESETS.size_max


def test_defaults_come_from_presets():
    request = parse_request("kontext_edit", {"prompt": "x", "image": "presets/examples/bluebird.jpg"})
    assert request.guidance_scale == PRESETS.modes["kontext_edit"].defaults["guidance_scale"] == 2.5
    assert request.num_inference_steps == 28 and request.seed == -1 and request.output_format == "png"
    assert (request.width, request.height) == (1024, 1024)
    request = parse_request("text_to_image", {"prompt": "x"})
    assert (request.width, request.height) == PRESETS.image_sizes["landscape_4_3"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "28", [28]])
def test_non_numbers_are_refused(value):
    with pytest.raises(FieldError, match="num_inference_steps must be an integer from 1 to 50"):
        parse_request("text_to_image", {"prompt": "x", "num_inference_steps": value})


def test_variants_bring_their_own_defaults_and_modes_their_own_ranges():
    image = "presets/examples/bluebird.jpg"
    depth = parse_request("control", {"prompt": "x", "image": image, "control_type": "depth"})
    canny = parse_request("control", {"prompt": "x", "image": image})
    assert (depth.guidance_scale, depth.num_inference_steps) == (10.0, 30)
    assert (canny.guidance_scale, canny.num_inference_steps) == (30.0, 50)
    assert PRESETS.field("guidance_scale", "control").max == 50 > PRESETS.field("guidance_scale").max
    with pytest.raises(FieldError, match="guidance_scale must be a number from 0 to 20"):
        parse_request("text_to_image", {"prompt": "x", "guidance_scale": 30})
