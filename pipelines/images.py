"""Image sizes and image files: small pure functions, one idea each."""

from __future__ import annotations

import io
import math

from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image, ImageOps

# Pillow's names for the formats users ask for.
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def floor_to_multiple(value: float, multiple: int) -> int:
    """The largest multiple of `multiple` not above `value`, and at least `multiple`."""
    return max(multiple, int(value) // multiple * multiple)


def fit_size(width: int, height: int, min_side: int, max_side: int, multiple: int) -> tuple[int, int]:
    """Scale (width, height) keeping its aspect so both sides lie in [min_side, max_side],
    then floor each to `multiple`. Extreme aspects are clamped rather than distorted more."""
    scale = 1.0
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
    elif min(width, height) < min_side:
        scale = min(min_side / min(width, height), max_side / max(width, height))
    fitted = [min(max(round(side * scale), min_side), max_side) for side in (width, height)]
    return floor_to_multiple(fitted[0], multiple), floor_to_multiple(fitted[1], multiple)


def size_at_area(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """The size with the aspect of (width, height) and about `area` pixels, floored to `multiple`."""
    aspect = width / height
    return (
        floor_to_multiple(math.sqrt(area * aspect), multiple),
        floor_to_multiple(math.sqrt(area / aspect), multiple),
    )


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The resolution Kontext was trained on whose aspect is nearest to (width, height)'s."""
    aspect = width / height
    _, best_width, best_height = min(
        (abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS
    )
    return best_width, best_height


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: honour the EXIF orientation, composite transparency onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def encode_image(image: Image.Image, output_format: str, quality: int) -> bytes:
    """The image as a file in the format asked for; quality applies to JPEG and WebP."""
    buffer = io.BytesIO()
    options = {} if output_format == "png" else {"quality": quality}
    image.save(buffer, format=PIL_FORMATS[output_format], **options)
    return buffer.getvalue()
