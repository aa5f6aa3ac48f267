"""Masks for inpainting and outpainting: small pure functions on PIL images and sizes.

A mask is an 8-bit "L" image the size of its image; white marks what is repainted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from pipelines.imaging.images import fit_size
from presets import PRESETS


def parse_ratio(text: str) -> tuple[int, int]:
    """ "16:9" as (16, 9)."""
    width, height = text.split(":")
    return int(width), int(height)


# The target aspect ratios outpainting offers, as (width, height).
ASPECT_RATIOS = {name: parse_ratio(name) for name in PRESETS.choices["aspect_ratio"].values if name != "none"}


def feather_inward(mask: Image.Image, radius: int) -> Image.Image:
    """The mask with its edge softened inside the masked area only: where the mask is black
    it stays black, so blending with it never touches what lies outside the mask."""
    if radius <= 0:
        return mask
    return ImageChops.darker(mask, mask.filter(ImageFilter.GaussianBlur(radius)))


def keep_unmasked(original: Image.Image, generated: Image.Image, mask: Image.Image, radius: int) -> Image.Image:
    """The generated image inside the mask, the original outside it (exactly: the VAE's round
    trip would otherwise alter every pixel), blended over a `radius`-pixel feather."""
    return Image.composite(generated, original, feather_inward(mask, radius))


@dataclass(frozen=True)
class OutpaintLayout:
    """Where the input image lies on the outpainting canvas."""

    canvas: tuple[int, int]  # (width, height), multiples of the size multiple
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the input on the canvas


def aspect_margins(width: int, height: int, ratio: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) margins that give (width, height) the aspect `ratio`,
    growing the short dimension evenly on both ends."""
    target = ratio[0] / ratio[1]
    if width / height < target:
        extra = round(height * target) - width
        return extra // 2, 0, extra - extra // 2, 0
    extra = round(width / target) - height
    return 0, extra // 2, 0, extra - extra // 2


def _round_up_margins(before: int, length: int, after: int, multiple: int) -> tuple[int, int]:
    """Margins grown so before + length + after is a multiple: on the sides already growing,
    else evenly on both."""
    extra = -(before + length + after) % multiple
    if before and not after:
        return before + extra, after
    if after and not before:
        return before, after + extra
    return before + extra // 2, after + extra - extra // 2


def outpaint_layout(size: tuple[int, int], margins: tuple[int, int, int, int], ratio: tuple[int, int] | None,
                    min_side: int, max_side: int, multiple: int) -> OutpaintLayout:
    """The canvas for outpainting an image of `size` by `margins` (left, top, right, bottom)
    or to an aspect `ratio`. The input keeps its pixels unless the canvas would exceed
    `max_side` (or fall under `min_side`), in which case everything is scaled to fit."""
    width, height = size
    left, top, right, bottom = aspect_margins(width, height, ratio) if ratio else margins
    canvas_width, canvas_height = width + left + right, height + top + bottom
    fitted = fit_size(canvas_width, canvas_height, min_side, max_side, multiple)
    if max(canvas_width, canvas_height) <= max_side and min(canvas_width, canvas_height) >= min_side:
        left, right = _round_up_margins(left, width, right, multiple)
        top, bottom = _round_up_margins(top, height, bottom, multiple)
        canvas = (width + left + right, height + top + bottom)
        if max(canvas) <= max_side:
            return OutpaintLayout(canvas, (left, top, left + width, top + height))
    scale_x, scale_y = fitted[0] / canvas_width, fitted[1] / canvas_height
    box = (round(left * scale_x), round(top * scale_y),
           round((left + width) * scale_x), round((top + height) * scale_y))
    return OutpaintLayout(fitted, box)


def outpaint_canvas(image: Image.Image, layout: OutpaintLayout) -> tuple[Image.Image, Image.Image]:
    """The canvas (the input in its box, the margins filled by repeating its edge pixels, so
    a partial denoise starts from plausible colours) and the mask of the margins."""
    left, top, right, bottom = layout.box
    width, height = layout.canvas
    inner = image if image.size == (right - left, bottom - top) else \
        image.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    pixels = np.pad(np.asarray(inner), ((top, height - bottom), (left, width - right), (0, 0)), mode="edge")
    mask = Image.new("L", layout.canvas, 255)
    mask.paste(0, layout.box)
    return Image.fromarray(pixels), mask
