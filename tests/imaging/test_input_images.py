"""load_input_image: every kind of user image file comes back as upright 8-bit RGB, or is
refused with a message that names the field and says what is accepted. Each input file is
generated here with Pillow, numpy or (for what Pillow cannot write) by hand."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines.errors import FieldError
from pipelines.imaging.images import load_input_image, to_rgb, upright_size
from presets import PRESETS

MIN_SIDE, MAX_PIXELS = PRESETS.input_min_side, PRESETS.input_max_pixels
RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def load(source, field="image"):
    return load_input_image(source, field, MIN_SIDE, MAX_PIXELS)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def columns(values, dtype) -> np.ndarray:
    """A 64x64 array whose four 16-px column bands hold `values` (read back at x = 8, 24, 40, 56)."""
    return np.tile(np.repeat(np.asarray(values, dtype=dtype), 16, axis=0), (64,) + (1,) * np.ndim(values))


def band_pixels(image: Image.Image) -> list[tuple[int, ...]]:
    return [image.getpixel((x, 32)) for x in (8, 24, 40, 56)]


def near(actual, expected, tolerance=3) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes]) -> bytes:
    """A PNG written without Pillow, for what Pillow cannot save (16-bit RGB)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + row for row in rows))  # filter type 0 on each row
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels)
            + png_chunk(b"IEND", b""))


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 RGBA PNG whose IHDR claims width x height, CRC recomputed so Pillow trusts it."""
    data = bytearray(encoded(Image.new("RGBA", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any file's pixels are decoded (and so allocated): every format's
    decoding goes through ImageFile.load."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- unreadable files ------------------------------------------------------------------------

def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 192, 3), dtype=np.uint8))


@pytest.mark.parametrize("data, reason", [
    (b"this is not an image, just some text\n", "not a recognised image format"),
    (b"", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image format"),
    (_half(encoded(NOISE, "PNG")), "image file is truncated"),
    (_half(encoded(NOISE, "JPEG")), "image file is truncated"),
    (_half(encoded(NOISE, "GIF")), "image file is truncated"),
])
def test_unreadable_files_are_refused_with_the_reason(tmp_path, data, reason):
    path = write(tmp_path, "upload.png", data)
    for source in (path, data):
        with pytest.raises(FieldError) as refused:
            load(source, field="image_url")
        assert refused.value.field == "image_url"
        message = str(refused.value)
        assert message.startswith(f"image_url could not be read as an image ({reason}")
        assert "use a PNG, JPEG, WebP, GIF" in message  # says what is accepted
    # Truncated files fail at decode time because Pillow is left strict.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_input_image_error_is_a_value_error():
    with pytest.raises(ValueError):
        load(b"nope")


def test_formats_outside_the_list_are_refused(tmp_path):
    ppm = encoded(Image.new("RGB", (64, 64)), "PPM")
    with pytest.raises(FieldError, match=r"not a recognised image format\); use a PNG"):
        load(write(tmp_path, "x.ppm", ppm))
    with pytest.raises(FieldError, match="PPM files are not accepted"):
        load(Image.open(io.BytesIO(ppm)))  # opened elsewhere without the format list


def test_missing_file_and_wrong_source_type():
    with pytest.raises(FieldError, match="could not be read as an image .*No such file"):
        load("/nonexistent/upload.png")
    with pytest.raises(FieldError, match="image must be an image file .*got int"):
        load(42)


# --- sizes ------------------------------------------------------------------------------------

def test_limits_come_from_presets():
    assert (MIN_SIDE, MAX_PIXELS) == (64, 40_000_000)
    # Pillow's own guard agrees: it warns above our limit and refuses above twice it.
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_too_many_pixels_is_refused_from_the_header(no_decoding):
    # 48 MP: over our limit, under twice Pillow's (now equal) limit: our check refuses it.
    with pytest.raises(FieldError) as refused:
        load(png_claiming(8000, 6000))
    assert str(refused.value) == ("image is 8000x6000 = 48,000,000 pixels; at most 40,000,000 "
                                  "pixels (40 megapixels) are accepted")


def test_decompression_bomb_is_refused_by_pillows_guard_without_decoding(no_decoding, tmp_path):
    # 10 gigapixels (40 GB as RGBA): Pillow refuses it inside Image.open; the message is ours.
    path = write(tmp_path, "bomb.png", png_claiming(100_000, 100_000))
    assert path.stat().st_size < 100
    with pytest.raises(FieldError) as refused:
        load(path, field="image")
    assert str(refused.value) == ("image is 10,000,000,000 pixels; at most 40,000,000 pixels "
                                  "(40 megapixels) are accepted")


@pytest.mark.parametrize("size", [(40, 300), (300, 40), (1, 1), (63, 64)])
def test_tiny_images_are_refused_with_size_and_minimum(size):
    with pytest.raises(FieldError) as refused:
        load(encoded(Image.new("RGB", size), "PNG"))
    assert str(refused.value) == f"image is {size[0]}x{size[1]}; each side must be at least 64 px"


def test_large_image_within_the_limit_is_accepted_at_full_size():
    image, warnings = load(encoded(Image.new("L", (6000, 4000), 200), "PNG"))
    assert image.size == (6000, 4000) and image.mode == "RGB" and warnings == []
    assert image.getpixel((5999, 3999)) == (200, 200, 200)


def test_smallest_accepted_size():
    assert load(encoded(Image.new("RGB", (64, 64)), "PNG"))[0].size == (64, 64)


# --- orientation ------------------------------------------------------------------------------

def half_red_jpeg(orientation: int) -> bytes:
    """200x100 as stored: left half red, right half blue, with an EXIF orientation."""
    image = Image.new("RGB", (200, 100), BLUE)
    image.paste(RED, (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize("orientation, size, red_at, blue_at", [
    (1, (200, 100), (50, 50), (150, 50)),   # as stored
    (6, (100, 200), (50, 50), (50, 150)),   # turned 90° clockwise: the left half ends up on top
    (8, (100, 200), (50, 150), (50, 50)),   # turned 90° anticlockwise: the left half at the bottom
    (3, (200, 100), (150, 50), (50, 50)),   # upside down: the left half on the right
])
def test_exif_orientation_is_honoured(orientation, size, red_at, blue_at):
    image, warnings = load(half_red_jpeg(orientation))
    assert image.size == size and warnings == []
    assert upright_size(Image.open(io.BytesIO(half_red_jpeg(orientation)))) == size  # from the header alone
    assert near(image.getpixel(red_at), RED, 8) and near(image.getpixel(blue_at), BLUE, 8)
    assert image.getexif().get(0x0112) in (None, 1)  # not applied twice downstream


# --- modes ------------------------------------------------------------------------------------

def test_cmyk_jpeg():
    cmyk = Image.fromarray(columns([(0, 255, 255, 0), (255, 255, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255)],
                                   np.uint8), "CMYK")
    data = encoded(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image, _ = load(data)
    assert image.mode == "RGB" and image.size == (64, 64)
    for actual, expected in zip(band_pixels(image), [RED, BLUE, WHITE, BLACK], strict=True):
        assert near(actual, expected, 6), (actual, expected)


def palette_image(transparency: int | None) -> bytes:
    image = Image.fromarray(columns([0, 1, 0, 1], np.uint8), "L").convert("P")
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])  # 0 red, 1 blue, 2 green (unused)
    return encoded(image, "PNG", **({} if transparency is None else {"transparency": transparency}))


def test_palette_png_without_transparency():
    image, warnings = load(palette_image(None))
    assert band_pixels(image) == [RED, BLUE, RED, BLUE] and warnings == []


def test_palette_png_with_transparency_is_put_on_white():
    image, warnings = load(palette_image(1), field="image_url")
    assert band_pixels(image) == [RED, WHITE, RED, WHITE]
    assert warnings == ["image_url has transparent areas; they are filled with white"]


def test_palette_transparency_that_no_pixel_uses_gives_no_warning():
    image, warnings = load(palette_image(2))
    assert band_pixels(image) == [RED, BLUE, RED, BLUE] and warnings == []


@pytest.mark.parametrize("mode, pixels", [
    ("LA", [(0, 0), (0, 128), (0, 255), (200, 255)]),
    ("RGBA", [(255, 0, 0, 0), (255, 0, 0, 128), (255, 0, 0, 255), (0, 0, 255, 255)]),
])
def test_alpha_is_composited_on_white(mode, pixels):
    data = encoded(Image.fromarray(columns(pixels, np.uint8), mode), "PNG")
    image, warnings = load(data)
    expected = ([WHITE, (127, 127, 127), BLACK, (200, 200, 200)] if mode == "LA"
                else [WHITE, (255, 127, 127), RED, BLUE])
    assert all(near(a, e, 1) for a, e in zip(band_pixels(image), expected, strict=True))
    assert warnings == ["image has transparent areas; they are filled with white"]


def test_opaque_alpha_gives_no_warning():
    _, warnings = load(encoded(Image.new("RGBA", (64, 64), (1, 2, 3, 255)), "PNG"))
    assert warnings == []


def test_grayscale_and_one_bit():
    grey, _ = load(encoded(Image.fromarray(columns([0, 64, 128, 255], np.uint8)), "PNG"))
    assert band_pixels(grey) == [(0, 0, 0), (64, 64, 64), (128, 128, 128), WHITE]
    bits = Image.fromarray(columns([0, 255, 0, 255], np.uint8)).convert("1")
    one_bit, _ = load(encoded(bits, "PNG"))
    assert Image.open(io.BytesIO(encoded(bits, "PNG"))).mode == "1"
    assert band_pixels(one_bit) == [BLACK, WHITE, BLACK, WHITE]


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    data = encoded(Image.fromarray(columns([0, 257, 32768, 65535], np.uint16)), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((40, 32)) == WHITE  # Pillow clips
    image, _ = load(data)
    assert band_pixels(image) == [(0, 0, 0), (1, 1, 1), (128, 128, 128), WHITE]


def test_32_bit_integer_tiff_is_read_as_16_bit():
    data = encoded(Image.fromarray(columns([-5, 257, 32768, 70000], np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    image, _ = load(data)
    assert band_pixels(image) == [BLACK, (1, 1, 1), (128, 128, 128), WHITE]


@pytest.mark.parametrize("values, expected", [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),        # 0..1, as float TIFFs are
    ([-3.0, 100.0, 200.5, 900.0], [0, 100, 200, 255]),  # otherwise Pillow's 0..255 scale, clipped
])
def test_float_tiff(values, expected):
    data = encoded(Image.fromarray(columns(values, np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    image, _ = load(data)
    assert band_pixels(image) == [(v, v, v) for v in expected]


def test_16_bit_rgb_png_keeps_pillows_high_byte():
    # Pillow has no 48-bit mode: it opens 16-bit RGB PNGs as 8-bit "RGB", keeping each
    # sample's high byte (0x80FF -> 128: truncated, at most one level below rounding).
    samples = [(65535, 0, 0), (32768, 32768, 32768), (0x80FF, 0x00FF, 0xFFFF), (0, 0, 65535)]
    row = b"".join(struct.pack(">HHH", *samples[x // 16]) for x in range(64))
    data = handmade_png(64, 64, 16, 2, [row] * 64)
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    image, warnings = load(data)
    assert band_pixels(image) == [RED, (128, 128, 128), (128, 0, 255), BLUE] and warnings == []


# --- frames -----------------------------------------------------------------------------------

def three_frames(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, (0, 255, 0), BLUE)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animations_use_the_first_frame(fmt):
    data = three_frames(fmt)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image, warnings = load(data, field="image_url")
    assert image.size == (64, 64) and near(image.getpixel((32, 32)), RED, 4)
    assert warnings == ["image_url is animated (3 frames); the first frame is used"]


def test_multi_page_tiff_uses_the_first_page():
    pages = [Image.new("RGB", (64, 64), colour) for colour in (BLUE, RED)]
    image, warnings = load(encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert image.getpixel((0, 0)) == BLUE
    assert warnings == ["image has 2 pages; the first page is used"]


def test_camera_mpo_uses_the_main_image_without_a_warning():
    shots = [Image.new("RGB", (64, 64), colour) for colour in (RED, BLUE)]
    data = encoded(shots[0], "MPO", save_all=True, append_images=shots[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image, warnings = load(data)
    assert near(image.getpixel((32, 32)), RED, 4) and warnings == []


# --- sources ----------------------------------------------------------------------------------

def test_every_kind_of_source_gives_the_same_image(tmp_path):
    data = half_red_jpeg(6)
    path = write(tmp_path, "photo.jpg", data)
    buffer = io.BytesIO(data)
    results = [load(source)[0] for source in (path, str(path), data, bytearray(data), buffer,
                                                 Image.open(io.BytesIO(data)))]
    assert not buffer.closed  # the caller's file object stays the caller's
    for image in results:
        assert image.size == (100, 200) and image.tobytes() == results[0].tobytes()


def test_an_image_made_in_memory_is_accepted():
    image, warnings = load(Image.new("RGBA", (64, 64), (0, 0, 255, 0)))
    assert image.getpixel((0, 0)) == WHITE and warnings


def test_to_rgb_still_works_on_open_images():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert to_rgb(rgba).mode == "RGB" and to_rgb(rgba).getpixel((0, 0)) == WHITE
    assert to_rgb(Image.open(io.BytesIO(half_red_jpeg(6)))).size == (100, 200)
    assert to_rgb(Image.fromarray(np.full((4, 4), 65535, np.uint16))).getpixel((0, 0)) == WHITE
    assert to_rgb(Image.new("L", (4, 4), 7)).getpixel((0, 0)) == (7, 7, 7)
