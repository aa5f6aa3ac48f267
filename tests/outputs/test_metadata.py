"""Parameters embedded in saved images: our JSON, A1111's infotext, and reading both back."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image, PngImagePlugin, TiffImagePlugin

from pipelines.imaging.images import encode_image
from pipelines.outputs.infotext import format_infotext, parse_infotext
from pipelines.outputs.metadata import (
    EXIF_IFD,
    IMAGE_DESCRIPTION,
    USER_COMMENT,
    decode_user_comment,
    encode_with_parameters,
    image_info,
    read_parameters,
)

FORMATS = ("png", "jpeg", "webp")

INFO = {
    "mode": "text_to_image",
    "model": "FLUX.1-dev",
    "prompt": "a cat, in a hat: café ☕ 🐈",
    "negative_prompt": "blurry",
    "width": 64,
    "height": 48,
    "num_inference_steps": 28,
    "guidance_scale": 3.5,
    "true_cfg_scale": 1.0,
    "seed": 43,
    "seeds": [42, 43],
    "num_images": 2,
    "output_format": "png",
    "output_quality": 90,
    "request_id": "0123456789ab",
    "warnings": [],
    "timings": {"queued_ms": 3, "executed_ms": 1200},
}


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 5 % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


@pytest.mark.parametrize("output_format", FORMATS)
def test_round_trip_restores_the_info_exactly(output_format):
    data = encode_with_parameters(gradient(), output_format, 90, INFO)
    assert read_parameters(data) == INFO


@pytest.mark.parametrize("output_format", FORMATS)
def test_pixels_are_those_of_a_plain_encode(output_format):
    image = gradient()
    plain = encode_image(image, output_format, 80)
    assert pixels(encode_with_parameters(image, output_format, 80, INFO)) == pixels(plain)
    if output_format == "png":
        assert pixels(plain) == image.tobytes()  # and PNG stays lossless


@pytest.mark.parametrize("output_format", FORMATS)
def test_every_source_kind_reads(output_format, tmp_path):
    data = encode_with_parameters(gradient(), output_format, 90, INFO)
    path = tmp_path / f"image.{output_format}"
    path.write_bytes(data)
    with Image.open(path) as opened:
        from_image = read_parameters(opened)
    assert read_parameters(path) == read_parameters(str(path)) == from_image == INFO
    file = io.BytesIO(data)
    assert read_parameters(file) == INFO and not file.closed  # the caller's file stays open


def test_png_carries_a1111_text_and_json_chunks():
    data = encode_with_parameters(gradient(), "png", 90, INFO)
    with Image.open(io.BytesIO(data)) as image:
        assert image.text["parameters"] == format_infotext(INFO)
        assert image.text["Software"] == "FLUX Playground"
        assert "flux_playground" in image.text


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_exif_is_what_a1111_and_exif_readers_expect(output_format):
    data = encode_with_parameters(gradient(), output_format, 90, INFO)
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        comment = exif.get_ifd(EXIF_IFD)[USER_COMMENT]
        assert exif[0x0131] == "FLUX Playground"
        assert exif[IMAGE_DESCRIPTION].isascii()
        raw = image.info["exif"]
    # piexif's UserComment.dump(text, encoding="unicode"), as A1111 writes it
    assert comment == b"UNICODE\0" + format_infotext(INFO).encode("utf-16-be")
    assert decode_user_comment(comment) == format_infotext(INFO)
    assert exif_ifd_types(raw)[USER_COMMENT] == 7  # UNDEFINED, as the EXIF standard says


def exif_ifd_types(raw: bytes) -> dict[int, int]:
    """Field types of the Exif sub-IFD, straight from the bytes."""
    tiff = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    first = TiffImagePlugin.ImageFileDirectory_v2(tiff[:8])
    stream = io.BytesIO(tiff)
    stream.seek(struct.unpack(">I", tiff[4:8])[0])
    first.load(stream)
    stream.seek(first[EXIF_IFD])
    sub = TiffImagePlugin.ImageFileDirectory_v2(tiff[:8])
    sub.load(stream)
    return dict(sub.tagtype)


def test_a1111_text_for_a_known_info():
    assert format_infotext(INFO) == (
        "a cat, in a hat: café ☕ 🐈\n"
        "Negative prompt: blurry\n"
        "Steps: 28, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 43, "
        "Size: 64x48, Model: FLUX.1-dev, Mode: text_to_image"
    )


def test_a1111_text_of_other_modes_quotes_like_a1111():
    info = {"mode": "image_to_image", "model": "FLUX.1-dev (demo: tiny, random)", "prompt": "a fox",
            "width": 512, "height": 512, "num_inference_steps": 20, "guidance_scale": 3.5,
            "strength": 0.75, "seed": 7}
    assert format_infotext(info) == (
        "a fox\n"
        "Steps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7, Size: 512x512, "
        'Model: "FLUX.1-dev (demo: tiny, random)", Denoising strength: 0.75, Mode: image_to_image'
    )


def test_our_text_parses_back_to_our_fields():
    assert parse_infotext(format_infotext(INFO)) == {
        "prompt": INFO["prompt"], "negative_prompt": "blurry", "num_inference_steps": 28,
        "guidance_scale": 3.5, "true_cfg_scale": 1.0, "seed": 43, "width": 64, "height": 48,
        "model": "FLUX.1-dev", "mode": "text_to_image",
    }


def test_hand_written_a1111_text_parses():
    text = (
        "masterpiece, a castle on a hill,\nat dusk\n"
        "Negative prompt: lowres, bad anatomy\nwatermark\n"
        'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, '
        'Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, '
        'Lora hashes: "detail: 0a1b2c, style: 3d4e5f", Version: v1.10.1'
    )
    assert parse_infotext(text) == {
        "prompt": "masterpiece, a castle on a hill,\nat dusk",
        "negative_prompt": "lowres, bad anatomy\nwatermark",
        "num_inference_steps": 30, "guidance_scale": 7.0, "seed": 1234567890,
        "width": 832, "height": 1216, "model": "sd_xl_base_1.0",
    }


def test_forge_flux_text_parses_distilled_guidance():
    text = ("a lighthouse\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
            "Distilled CFG Scale: 3.5, Seed: 5, Size: 896x1152, Model: flux1-dev-bnb-nf4-v2")
    parsed = parse_infotext(text)
    assert parsed["guidance_scale"] == 3.5 and parsed["true_cfg_scale"] == 1.0
    assert parse_infotext(text.replace("Distilled CFG Scale", "Distilled guidance")) == parsed


def test_unconvertible_values_are_skipped_and_a_prompt_alone_stays_a_prompt():
    assert parse_infotext("a dog\nSteps: many, Seed: 3, Size: big") == {"prompt": "a dog", "seed": 3}
    assert parse_infotext("just a prompt: with a colon") == {"prompt": "just a prompt: with a colon"}


def test_a1111_png_without_json_restores_from_its_text():
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("parameters", "a boat\nNegative prompt: fog\nSteps: 25, Sampler: Euler a, "
                                  "CFG scale: 6.5, Seed: 99, Size: 512x768, Model: v1-5")
    buffer = io.BytesIO()
    gradient().save(buffer, format="PNG", pnginfo=chunks)
    assert read_parameters(buffer.getvalue()) == {
        "prompt": "a boat", "negative_prompt": "fog", "num_inference_steps": 25, "guidance_scale": 6.5,
        "seed": 99, "width": 512, "height": 768, "model": "v1-5",
    }


def test_a1111_jpeg_user_comment_restores_without_json():
    from pipelines.outputs.metadata import _exif

    buffer = io.BytesIO()
    gradient().save(buffer, format="JPEG", exif=_exif("a tree\nSteps: 4, CFG scale: 2, Seed: 8", None))
    assert read_parameters(buffer.getvalue()) == {
        "prompt": "a tree", "num_inference_steps": 4, "guidance_scale": 2.0, "seed": 8}


@pytest.mark.parametrize("raw, text", [
    (b"UNICODE\0" + "héllo".encode("utf-16-be"), "héllo"),
    (b"UNICODE\0" + "héllo".encode("utf-16-le"), "héllo"),
    (b"ASCII\0\0\0hello\0", "hello"),
    (b"\0" * 8 + b"hello", "hello"),
    (b"hello", "hello"),
])
def test_user_comment_encodings(raw, text):
    assert decode_user_comment(raw) == text


@pytest.mark.parametrize("output_format", FORMATS)
def test_images_without_metadata_give_none(output_format):
    assert read_parameters(encode_image(gradient(), output_format, 90)) is None


def test_foreign_exif_description_is_not_taken_for_json():
    exif = Image.Exif()
    exif[IMAGE_DESCRIPTION] = "OLYMPUS DIGITAL CAMERA"
    buffer = io.BytesIO()
    gradient().save(buffer, format="JPEG", exif=exif)
    assert read_parameters(buffer.getvalue()) is None


@pytest.mark.parametrize("garbage", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_gives_none(garbage, tmp_path):
    assert read_parameters(garbage) is None
    assert read_parameters(io.BytesIO(garbage)) is None
    assert read_parameters(tmp_path / "missing.png") is None


def test_other_formats_are_not_opened():
    buffer = io.BytesIO()
    gradient().save(buffer, format="GIF", comment=b"a prompt")
    assert read_parameters(buffer.getvalue()) is None


def test_unsupported_source_type_is_a_caller_error():
    with pytest.raises(TypeError):
        read_parameters(42)


def test_jpeg_exif_too_long_drops_the_infotext_first():
    info = {**INFO, "prompt": "漢" * 5000, "negative_prompt": "字" * 5000}  # 60 kB JSON + 20 kB text
    data = encode_with_parameters(gradient(), "jpeg", 90, info)
    assert read_parameters(data) == info
    with Image.open(io.BytesIO(data)) as image:
        assert USER_COMMENT not in image.getexif().get_ifd(EXIF_IFD)


def test_jpeg_exif_too_long_for_the_json_keeps_the_infotext():
    info = {**INFO, "prompt": "🐈" * 4000, "negative_prompt": "🐕" * 4000}  # 12 bytes a cat as JSON
    data = encode_with_parameters(gradient(), "jpeg", 90, info)
    restored = read_parameters(data)
    assert restored["prompt"] == info["prompt"] and restored["negative_prompt"] == info["negative_prompt"]
    assert restored["seed"] == 43 and "request_id" not in restored  # from the text, not the JSON
    assert read_parameters(encode_with_parameters(gradient(), "webp", 90, info)) == info  # no limit in WebP


def test_image_info_sets_the_images_own_seed():
    per_image = image_info(INFO, 44)
    assert per_image["seed"] == 44 and per_image["seeds"] == [42, 43] and INFO["seed"] == 43
    assert read_parameters(encode_with_parameters(gradient(), "webp", 90, per_image))["seed"] == 44
