"""Output formats of the OpenAI routes: the presets' (png, jpeg, webp) and the others seed
002's gateway offers that this Pillow writes (gif, avif).

Only these routes offer the others, so the page and the other APIs keep the presets' formats:
a GIF or AVIF request runs as PNG (lossless, with its parameters embedded, in the history as
any result), and its images are then written again in the format asked for and stored beside
it, served under their own ids with their own content type (without embedded parameters).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image

from pipelines.errors import FieldError
from pipelines.imaging.images import MIME_TYPES, WRITABLE_FORMATS, encode_image
from pipelines.outputs.results import ResultStore
from pipelines.service import GenerationResult, StoredImage
from presets import PRESETS

EXTRA_FORMATS = tuple(name for name in WRITABLE_FORMATS if name not in PRESETS.output_formats)
OPENAI_FORMATS = PRESETS.output_formats + EXTRA_FORMATS
RUN_FORMAT = "png"  # what a request for one of the extra formats runs in


def checked_format(output_format: Any) -> str:
    """The format asked for (the presets' default when none is), or a FieldError listing the
    formats this server writes."""
    if output_format is None:
        return PRESETS.default_output_format
    if output_format not in OPENAI_FORMATS:
        raise FieldError("output_format", f"output_format must be one of {', '.join(OPENAI_FORMATS)} (the formats "
                                          f"this server writes); got {output_format!r}")
    return output_format


def run_format(output_format: str) -> str:
    """The format a request runs in: its own, or PNG for the extra formats, written afterwards."""
    return RUN_FORMAT if output_format in EXTRA_FORMATS else output_format


def in_format(store: ResultStore, image: StoredImage, output_format: str, quality: int) -> StoredImage:
    """A stored image in the format asked for: itself, or written again from its PNG and
    stored beside it."""
    if output_format not in EXTRA_FORMATS:
        return image
    with Image.open(image.file) as stored:
        data = encode_image(stored.convert("RGB"), output_format, quality)
    result_id = store.save(data, output_format)
    return replace(image, result_id=result_id, file=store.folder / result_id, content_type=MIME_TYPES[output_format])


def final_images(store: ResultStore, result: GenerationResult, output_format: str) -> list[StoredImage]:
    """A result's images in the format asked for. Blocking: call it off the event loop."""
    return [in_format(store, image, output_format, result.request.output_quality) for image in result.images]
