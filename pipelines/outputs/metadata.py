"""Generation parameters inside the image files themselves, as A1111 and ComfyUI write them.

Every stored image carries what made it twice:

* A1111's "infotext" (see `pipelines.outputs.infotext`: prompt, "Negative prompt: ..." line, then "Steps: 28, Sampler: ..."),
  so A1111, Forge, Civitai and other tools that read A1111 images show something sensible;
* our full info dict as JSON: the machine-readable source of truth that `read_parameters`
  prefers.

PNG: text chunks "parameters" (infotext) and "flux_playground" (JSON), plus "Software".
JPEG and WebP: EXIF UserComment (infotext, "UNICODE" header + UTF-16-BE, as A1111 writes it
through piexif), ImageDescription (JSON) and Software.

The info passed in is per image: its "seed" must be that image's own seed (the request's
seed + the image's index), or the file would not reproduce itself; `image_info` makes one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from contextlib import contextmanager
from typing import Any

from PIL import Image, PngImagePlugin

from pipelines.imaging.images import encode_image
from pipelines.outputs.infotext import format_infotext, parse_infotext

log = logging.getLogger("flux_playground")

SOFTWARE = "FLUX Playground"
PNG_INFOTEXT_KEY = "parameters"  # A1111's and Forge's keyword
PNG_JSON_KEY = "flux_playground"
EXIF_IFD, USER_COMMENT, IMAGE_DESCRIPTION, EXIF_SOFTWARE, EXIF_VERSION = 0x8769, 0x9286, 0x010E, 0x0131, 0x9000
ASCII, LONG, UNDEFINED = 2, 4, 7  # TIFF field types
# A JPEG APP1 segment holds at most this much EXIF (Pillow refuses more).
JPEG_EXIF_LIMIT = 65533
UNICODE_HEADER, ASCII_HEADER = b"UNICODE\0", b"ASCII\0\0\0"
# The formats parameters are written in: only their openers run on what a caller hands in,
# never Pillow's riskier ones (EPS runs Ghostscript). MPO files open through the JPEG opener.
READ_FORMATS = ("PNG", "JPEG", "WEBP")
# What opening a bad file raises: Pillow's errors plus what broken headers surface as.
OPEN_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


def image_info(info: dict[str, Any], seed: int) -> dict[str, Any]:
    """`info` for one image of a request: the same, with that image's own seed."""
    return {**info, "seed": seed}


# -- writing ---------------------------------------------------------------------------------


def encode_with_parameters(image: Image.Image, output_format: str, quality: int, info: dict[str, Any]) -> bytes:
    """`images.encode_image` (PNG lossless, JPEG/WebP at `quality`) with `info` embedded.

    `info` must be JSON-serialisable (anything else is written with str()) and per image:
    see `image_info`. The pixels are encoded exactly as without the metadata.
    """
    text, payload = format_infotext(info), info_json(info)
    if output_format == "png":
        chunks = PngImagePlugin.PngInfo()
        chunks.add_text(PNG_INFOTEXT_KEY, text)  # tEXt, or iTXt when not Latin-1, like A1111
        chunks.add_text(PNG_JSON_KEY, payload)
        chunks.add_text("Software", SOFTWARE)
        return encode_image(image, output_format, quality, pnginfo=chunks)
    limit = JPEG_EXIF_LIMIT if output_format == "jpeg" else None
    return encode_image(image, output_format, quality, exif=_fitting_exif(text, payload, limit))


def info_json(info: dict[str, Any]) -> str:
    # ASCII-only, since EXIF ImageDescription is an ASCII tag; str() for anything JSON lacks,
    # so an odd value never costs the image itself.
    return json.dumps(info, ensure_ascii=True, default=str)


def _fitting_exif(text: str, payload: str, limit: int | None) -> bytes:
    """EXIF with both copies, or, past `limit`, the most that fits: the JSON first."""
    for keep_text, keep_json in ((True, True), (False, True), (True, False), (False, False)):
        data = _exif(text if keep_text else None, payload if keep_json else None)
        if limit is None or len(data) <= limit:
            if not (keep_text and keep_json):
                log.warning("parameters too long for EXIF: infotext kept %s, JSON kept %s", keep_text, keep_json)
            return data
    raise AssertionError("unreachable: an EXIF with only Software always fits")


def _exif(text: str | None, payload: str | None) -> bytes:
    """A big-endian EXIF block with those of Software, ImageDescription (JSON) and UserComment
    (infotext) given. Written by hand because Pillow types a bytes UserComment BYTE, where the
    EXIF standard and piexif, which A1111 reads it with, want UNDEFINED."""
    exif_ifd = [(EXIF_VERSION, UNDEFINED, b"0232")]
    if text is not None:  # "UNICODE" then UTF-16-BE: piexif's UserComment.dump(encoding="unicode")
        exif_ifd.append((USER_COMMENT, UNDEFINED, UNICODE_HEADER + text.encode("utf-16-be")))
    ifd0 = [(EXIF_SOFTWARE, ASCII, SOFTWARE.encode("ascii") + b"\0")]
    if payload is not None:
        ifd0.append((IMAGE_DESCRIPTION, ASCII, payload.encode("ascii") + b"\0"))
    first_size = len(_ifd([*ifd0, (EXIF_IFD, LONG, bytes(4))], 8))  # where the Exif IFD will start
    first = _ifd([*ifd0, (EXIF_IFD, LONG, struct.pack(">I", 8 + first_size))], 8)
    return b"Exif\0\0MM\0\x2a" + struct.pack(">I", 8) + first + _ifd(exif_ifd, 8 + first_size)


def _ifd(entries: list[tuple[int, int, bytes]], offset: int) -> bytes:
    """One TIFF directory placed at `offset`: its 12-byte entries (tag, type, value) in tag
    order, then the values too long to sit in an entry, each at an even offset."""
    data_at = offset + 2 + 12 * len(entries) + 4
    table, data = struct.pack(">H", len(entries)), b""
    for tag, kind, value in sorted(entries):
        count = len(value) // (4 if kind == LONG else 1)
        if len(value) <= 4:
            table += struct.pack(">HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            table += struct.pack(">HHII", tag, kind, count, data_at + len(data))
            data += value + b"\0" * (len(value) % 2)
    return table + struct.pack(">I", 0) + data


# -- reading ---------------------------------------------------------------------------------


def read_parameters(source: Any) -> dict[str, Any] | None:
    """The parameters embedded in an image: a path, bytes, a binary file or a PIL image.

    Our JSON when present (PNG chunk or EXIF ImageDescription); else A1111 infotext (PNG
    "parameters" chunk or EXIF UserComment, as A1111, Forge and some ComfyUI nodes write)
    mapped to our field names. None when there is nothing, and also for anything that is not
    a readable PNG, JPEG or WebP (garbage, other formats, a missing file): callers restoring
    parameters from uploads need no error handling. Only header chunks are read; pixels are
    never decoded.
    """
    try:
        with _opened(source) as image:
            found = _embedded_json(image)
            if found is None:
                text = _embedded_infotext(image)
                found = parse_infotext(text) if text else None
            return found
    except OPEN_ERRORS:
        return None  # not a PNG, JPEG or WebP Pillow can open


@contextmanager
def _opened(source: Any):
    if isinstance(source, Image.Image):
        yield source  # the caller's image: left open
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif not isinstance(source, (str, os.PathLike)) and not hasattr(source, "read"):
        raise TypeError(f"read_parameters takes a path, bytes, a file or an image, not {type(source).__name__}")
    with Image.open(source, formats=READ_FORMATS) as image:  # leaves a caller's file object open
        yield image


def _embedded_json(image: Image.Image) -> dict[str, Any] | None:
    for raw in (image.info.get(PNG_JSON_KEY), _exif_values(image)[0]):
        try:
            found = json.loads(raw) if raw else None
        except ValueError:  # e.g. a camera's "OLYMPUS DIGITAL CAMERA" description
            continue
        if isinstance(found, dict):
            return found
    return None


def _embedded_infotext(image: Image.Image) -> str | None:
    text = image.info.get(PNG_INFOTEXT_KEY)
    if isinstance(text, str) and text.strip():
        return str(text)
    comment = _exif_values(image)[1]
    return decode_user_comment(comment) if comment else None


def _exif_values(image: Image.Image) -> tuple[Any, Any]:
    """(ImageDescription, UserComment) of the image's EXIF; (None, None) when unreadable."""
    try:
        exif = image.getexif()
        return exif.get(IMAGE_DESCRIPTION), exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is as good as none, whatever Pillow raises
        return None, None


def decode_user_comment(raw: bytes | str) -> str:
    """An EXIF UserComment as text: its 8-byte character-code header says how it is encoded."""
    if isinstance(raw, str):  # some writers store it as plain text
        return raw.rstrip("\0")
    header, body = raw[:8], raw[8:]
    if header == UNICODE_HEADER:
        text = _decode_utf16(body)
    elif header == ASCII_HEADER or header == b"\0" * 8:  # ASCII or "undefined"
        text = body.decode("utf-8", errors="replace")
    else:  # no header at all: A1111 falls back to UTF-8 too
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\0")


def _decode_utf16(body: bytes) -> str:
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    # piexif (A1111) writes big-endian; others follow the EXIF byte order. Mostly-ASCII text
    # has its zero bytes at even offsets in big-endian, odd ones in little-endian.
    big = body[0::2].count(0) >= body[1::2].count(0)
    return body.decode("utf-16-be" if big else "utf-16-le", errors="replace")


