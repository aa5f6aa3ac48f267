"""The output size of an OpenAI Images request, from OpenAI's `size` and the size parameters
of seed 002's gateway: `aspect_ratio` (the shape), `resolution` (the scale: a tier "0.5K",
"1K", "2K", "4K" or megapixels "0.25", "1") and Replicate's `megapixels`.

The most specific wins. A `size` "WxH" is the exact size: validation refuses a side off the
16-pixel grid or out of range, never rounds it. A `size` "W:H" is an aspect ratio, as
`aspect_ratio` is, and wins over it. A shape and a scale make a size at the tier nearest the
one asked for, on the grid and within the presets' range (an extreme ratio is clamped to the
most the range allows: 8:1 with sides 256-2048).
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.errors import FieldError
from pipelines.imaging.images import fit_size, size_at_area
from presets import CUSTOM, PRESETS, format_number

# "1K" is a 1024x1024 image, and one megapixel 1024 * 1024 pixels (as Replicate's `megapixels`).
KILO_SIDE = 1024
DEFAULT_TIER_AREA = KILO_SIDE * KILO_SIDE  # a shape without a scale: about one megapixel
AUTO = "auto"


def tier_sides() -> list[int]:
    """This server's tiers, as the sides of their squares: 1K times the powers of two that lie
    on the grid within the presets' size range (256-2048: 0.25K, 0.5K, 1K and 2K)."""
    low = math.ceil(math.log2(PRESETS.size_min / KILO_SIDE))
    high = math.floor(math.log2(PRESETS.size_max / KILO_SIDE))
    sides = (round(KILO_SIDE * 2.0 ** power) for power in range(low, high + 1))
    return [side for side in sides if side % PRESETS.size_multiple == 0]


def tier_name(side: int) -> str:
    return f"{format_number(side / KILO_SIDE)}K"


def requested_area(tier: Any, field: str) -> float:
    """The pixels a tier asks for: "2K" a 2048x2048 image's, "0.25" (megapixels) 512x512's."""
    text = str(tier).strip().upper()
    try:
        number = float(text.removesuffix("K"))
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        tiers = ", ".join(tier_name(side) for side in tier_sides())
        raise FieldError(field, f'{field} must be a tier such as "1K" or megapixels such as "1" (this server\'s '
                                f"tiers: {tiers}); got {tier!r}")
    return (number * KILO_SIDE) ** 2 if text.endswith("K") else number * DEFAULT_TIER_AREA


def nearest_tier_area(tier: Any, field: str) -> int:
    """The pixels of this server's tier nearest (by ratio) the one asked for: "4K" is 2K here."""
    area = requested_area(tier, field)
    side = min(tier_sides(), key=lambda side: abs(math.log(side * side / area)))
    return side * side


def parse_pair(text: str, separator: str) -> tuple[float, float] | None:
    """"W<separator>H" as two positive numbers, or None when the text is not of that form."""
    parts = text.split(separator)
    try:
        pair = tuple(float(part) for part in parts)
    except ValueError:
        return None
    if len(pair) != 2 or not all(math.isfinite(side) and side > 0 for side in pair):
        return None
    return pair


def exact_size(size: str) -> tuple[int, int] | None:
    """A `size` "WxH" in whole pixels, or None when `size` is not of that form."""
    pair = parse_pair(size, "x")
    if pair is None:
        return None
    if not all(side.is_integer() for side in pair):
        raise FieldError("size", f"size must give whole pixels, got {size!r}")
    return int(pair[0]), int(pair[1])


def aspect(text: Any, field: str) -> tuple[float, float] | None:
    """An aspect ratio "W:H" (None: not given), or a FieldError naming `field`."""
    if text is None:
        return None
    ratio = parse_pair(str(text).strip(), ":")
    if ratio is None:
        raise FieldError(field, f'{field} must be an aspect ratio "W:H" such as "16:9", got {text!r}')
    return ratio


def shaped_size(shape: tuple[float, float], area: int) -> tuple[int, int]:
    """`shape` at about `area` pixels, on the grid, both sides within the presets' range."""
    width, height = size_at_area(*shape, area, PRESETS.size_multiple)
    return fit_size(width, height, PRESETS.size_min, PRESETS.size_max, PRESETS.size_multiple)


def custom(width: int, height: int) -> dict[str, Any]:
    return {"image_size": CUSTOM, "width": width, "height": height}


def output_size(values: dict[str, Any], default_shape: tuple[int, int]) -> dict[str, Any]:
    """Our image_size/width/height from OpenAI's and the gateway's size parameters; nothing
    (the route's default size) when none is given or `size` is "auto". A scale without a
    shape keeps `default_shape` (the route's default size, or an edit's input image)."""
    size = str(values.get("size") or AUTO).strip().lower()
    exact = exact_size(size)
    if exact is not None:
        return custom(*exact)
    shape = parse_pair(size, ":") if size != AUTO else None
    if size != AUTO and shape is None:
        raise FieldError("size", f'size must be "WxH" (e.g. "1024x768"), an aspect ratio "W:H" or "auto"; '
                                 f"got {values.get('size')!r}")
    shape = shape or aspect(values.get("aspect_ratio"), "aspect_ratio")
    tier_field = next((name for name in ("resolution", "megapixels") if values.get(name) is not None), None)
    if shape is None and tier_field is None:
        return {}
    area = nearest_tier_area(values[tier_field], tier_field) if tier_field else DEFAULT_TIER_AREA
    return custom(*shaped_size(shape or default_shape, area))
