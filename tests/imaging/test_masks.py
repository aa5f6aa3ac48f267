"""The mask functions on their own: feathering stays inside the mask, outpainting canvases."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.imaging.masks import (
    aspect_margins,
    feather_inward,
    keep_unmasked,
    outpaint_canvas,
    outpaint_layout,
)


def test_feathering_softens_only_inside_the_mask():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    soft = np.asarray(feather_inward(mask, 4))
    hard = np.asarray(mask)
    assert (soft[hard == 0] == 0).all()
    assert 0 < soft[16, 32] < 255 and soft[32, 32] == 255  # soft at the edge, full in the middle


def test_keep_unmasked_returns_the_original_outside_the_mask():
    original, generated = Image.new("RGB", (32, 32), (10, 20, 30)), Image.new("RGB", (32, 32), (200, 0, 0))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    out = np.asarray(keep_unmasked(original, generated, mask, 3))
    assert (out[:, 16:] == (10, 20, 30)).all() and (out[:, 2] == (200, 0, 0)).all()


@pytest.mark.parametrize(("size", "ratio", "margins"), [
    ((100, 100), (16, 9), (39, 0, 39, 0)),
    ((160, 90), (1, 1), (0, 35, 0, 35)),
    ((90, 160), (9, 16), (0, 0, 0, 0)),
])
def test_aspect_margins_grow_the_short_side_evenly(size, ratio, margins):
    assert aspect_margins(*size, ratio) == margins


def test_a_canvas_over_the_size_limit_is_scaled_down_with_its_input():
    layout = outpaint_layout((2000, 1000), (0, 0, 1000, 0), None, 256, 2048, 16)
    assert layout.canvas == (2048, 672) and max(layout.canvas) <= 2048
    left, top, right, bottom = layout.box
    assert (left, top) == (0, 0) and abs((right - left) / (bottom - top) - 2) < 0.05


def test_the_canvas_repeats_the_edge_and_masks_only_the_margins():
    image = Image.new("RGB", (256, 256), (0, 0, 255))
    image.paste((255, 0, 0), (255, 0, 256, 256))  # a red right edge
    layout = outpaint_layout(image.size, (0, 0, 64, 0), None, 256, 2048, 16)
    canvas, mask = outpaint_canvas(image, layout)
    assert canvas.size == mask.size == (320, 256)
    assert canvas.getpixel((300, 10)) == (255, 0, 0)
    assert mask.getbbox() == (256, 0, 320, 256)
