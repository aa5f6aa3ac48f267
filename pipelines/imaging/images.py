"""Image sizes and image files: small pure functions, one idea each."""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zlib

import numpy as np
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipelines.errors import FieldError
from presets import PRESETS

# Pillow's names for the formats users ask for: the presets' output formats, and GIF and AVIF,
# which only the OpenAI routes offer (seed 002's gateway lists them), where Pillow writes them.
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "avif": "AVIF"}
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
              "avif": "image/avif"}
# PNG is lossless at every zlib setting, so they trade only bytes for time. Level 1 with zlib's
# run-length strategy (after PNG's row filters) encodes a 1024x1024 result 2-3x faster than
# Pillow's default (level 6) and, on the images measured, in about as many bytes as level 6 and
# fewer than level 1 with the default strategy (bench/RESULTS.md, "Serving overhead").
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE

# Input formats Pillow may try. Others (EPS runs Ghostscript, PSD, ICNS, ...) are a larger attack
# surface for no use here. MPO (a camera JPEG with extra previews) opens through the JPEG opener.
Image.init()
# The formats this Pillow writes: AVIF needs Pillow built with libavif.
WRITABLE_FORMATS = tuple(name for name, pil_name in PIL_FORMATS.items() if pil_name in Image.SAVE)
OPENERS = tuple(f for f in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if f in Image.OPEN)
INPUT_FORMATS = OPENERS + ("MPO",)
_NAMES = [{"WEBP": "WebP"}.get(f, f) for f in OPENERS]
ACCEPTED = f"a {', '.join(_NAMES[:-1])} or {_NAMES[-1]} file"
# Formats whose extra frames are an animation (TIFF's are pages, MPO's previews of the same shot).
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP", "AVIF")
# What decoding a bad file raises: Pillow's own errors plus what broken headers surface as.
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


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


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown, read from its header: EXIF orientations 5-8
    turn it a quarter turn (what `to_rgb` does to it when it is decoded)."""
    width, height = image.size
    return (height, width) if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8) else (width, height)


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The resolution Kontext was trained on whose aspect is nearest to (width, height)'s."""
    aspect = width / height
    _, best_width, best_height = min(
        (abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS
    )
    return best_width, best_height


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grey as 8-bit "L"; other modes unchanged. Pillow's convert()
    clips these to 0..255 (65535 and 32768 both become white) instead of scaling them.
    "I" is taken as 16-bit (how Pillow opens 16-bit PNG/PGM files); "F" as 0..1 when every
    value lies there (float TIFFs), else as Pillow's 0..255 scale."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.nan_to_num(np.asarray(image, dtype=np.float32))
    top = 65535.0 if image.mode != "F" else 1.0 if 0 <= values.min() <= values.max() <= 1 else 255.0
    return Image.fromarray(np.clip(np.rint(values * (255 / top)), 0, 255).astype(np.uint8))


def has_transparent_pixels(image: Image.Image) -> bool:
    """Whether any pixel is less than opaque (palettes often declare transparency they never use)."""
    if not image.has_transparency_data:
        return False
    alpha = image.getchannel("A") if "A" in image.getbands() else image.convert("RGBA").getchannel("A")
    return alpha.getextrema()[0] < 255


def flatten_onto_white(image: Image.Image) -> Image.Image:
    """8-bit RGB with any transparency composited onto white, as the user saw it on a page."""
    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: honour the EXIF orientation, scale deep values, put transparency on white."""
    return flatten_onto_white(to_8bit(ImageOps.exif_transpose(image)))


def encode_image(image: Image.Image, output_format: str, quality: int, **save_options) -> bytes:
    """The image as a file in the format asked for; quality applies to JPEG, WebP and AVIF.
    `save_options` go to Pillow's `save` (e.g. metadata: `pnginfo`, `exif`)."""
    buffer = io.BytesIO()
    options = ({"compress_level": PNG_COMPRESS_LEVEL, "compress_type": PNG_COMPRESS_TYPE} if output_format == "png"
               else {"quality": quality})
    image.save(buffer, format=PIL_FORMATS[output_format], **options, **save_options)
    return buffer.getvalue()



def limit_pillow_pixels(max_pixels: int) -> None:
    """Make Pillow's process-wide bomb guard agree with ours; only ever tighten it. Pillow warns
    above MAX_IMAGE_PIXELS and refuses above twice that, also where our header check cannot reach
    (GIF frames that grow, TIFF tiles). Set once at import, not per call: the value is global and
    saving/restoring it per open would race between request threads. This process refuses
    larger inputs anyway, and its own outputs are far smaller."""
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


limit_pillow_pixels(PRESETS.input_max_pixels)


def open_lazily(source, field: str) -> Image.Image:
    """Open a path, bytes or file-like object; only the header is read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise FieldError(field, f"{field} must be an image file ({ACCEPTED}), "
                                     f"got {type(source).__name__}")
    return Image.open(source, formats=OPENERS)


def is_empty(source) -> bool:
    """Whether bytes or a file are empty, to say so rather than "not a recognised format"."""
    try:
        return len(source) == 0 if isinstance(source, (bytes, bytearray, memoryview)) \
            else isinstance(source, (str, os.PathLike)) and os.path.getsize(source) == 0
    except OSError:
        return False


def unreadable(field: str, reason: str) -> FieldError:
    return FieldError(field, f"{field} could not be read as an image ({reason}); use {ACCEPTED}")


def too_large(field: str, size: str, max_pixels: int) -> FieldError:
    return FieldError(field, f"{field} is {size}; at most {max_pixels:,} pixels "
                                  f"({max_pixels / 1e6:g} megapixels) are accepted")


def check_size(image: Image.Image, field: str, min_side: int, max_pixels: int) -> None:
    """Refuse from the header alone, before anything is decoded."""
    width, height = image.size
    if width * height > max_pixels:
        raise too_large(field, f"{width}x{height} = {width * height:,} pixels", max_pixels)
    if min(width, height) < min_side:
        raise FieldError(field, f"{field} is {width}x{height}; each side must be at least {min_side} px")


def first_frame(image: Image.Image, field: str) -> list[str]:
    """Go to the first frame of an animation or multi-page file, saying so."""
    frames = getattr(image, "n_frames", 1)
    if frames <= 1 or image.format == "MPO":  # MPO's other frames are previews of the same photo
        return []
    image.seek(0)
    if image.format in ANIMATED_FORMATS:
        return [f"{field} is animated ({frames} frames); the first frame is used"]
    return [f"{field} has {frames} pages; the first page is used"]


def to_mask(image: Image.Image) -> Image.Image:
    """An upright 8-bit "L" mask: the alpha channel where the image has transparent pixels (a
    painted layer: what is painted is opaque), else the grey value (white marks the area)."""
    image = to_8bit(ImageOps.exif_transpose(image))
    if has_transparent_pixels(image):
        return image.convert("RGBA").getchannel("A")
    return image.convert("L")


def load_input_image(source, field: str, min_side: int, max_pixels: int,
                     as_mask: bool = False) -> tuple[Image.Image, list[str]]:
    """An upright 8-bit RGB image (or, `as_mask`, an "L" mask) from a user's path, bytes, file
    object or PIL image, and warnings for what was fixed on the way; raises FieldError for
    what cannot be used."""
    opened_here = not isinstance(source, Image.Image)
    try:
        image = open_lazily(source, field) if opened_here else source
        try:
            if image.format is not None and image.format not in INPUT_FORMATS:
                raise unreadable(field, f"{image.format} files are not accepted")
            check_size(image, field, min_side, max_pixels)
            warnings = first_frame(image, field)
            image.load()  # decode here, inside the try: a truncated file fails now, not half-grey
            if as_mask:
                return to_mask(image), warnings
            if has_transparent_pixels(image):
                warnings.append(f"{field} has transparent areas; they are filled with white")
            return to_rgb(image), warnings
        finally:
            if opened_here:
                image.close()
    except FieldError:
        raise  # already says what is wrong (and is a ValueError, caught below)
    except Image.DecompressionBombError as error:  # Pillow's guard, before our header check
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        raise too_large(field, f"{int(pixels[1]):,} pixels" if pixels else "too large", max_pixels) from None
    except UnidentifiedImageError:
        raise unreadable(field, "the file is empty" if is_empty(source) else "not a recognised image format") from None
    except READ_ERRORS as error:
        raise unreadable(field, str(error) or type(error).__name__) from None
