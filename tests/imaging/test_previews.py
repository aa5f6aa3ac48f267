"""Live previews of FLUX latents: shapes, colours, sizes, when to emit, and that previewing
inside real diffusers pipelines (text-to-image, image-to-image, Kontext) sees the output's
latents and changes nothing."""

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxKontextPipeline, FluxPipeline
from PIL import Image

from pipelines.imaging.previews import (
    FLUX_LATENT_RGB_BIAS,
    FLUX_LATENT_RGB_FACTORS,
    latents_to_rgb,
    preview_image,
    preview_size,
    should_preview,
    spread_previews,
    unpack_latents,
)

# --- pure functions ------------------------------------------------------------------------


def test_unpack_shape_1024x768():
    packed = torch.randn(1, (768 // 16) * (1024 // 16), 64)
    assert unpack_latents(packed, height=768, width=1024).shape == (1, 16, 96, 128)


def test_unpack_inverts_diffusers_packing():
    latents = torch.randn(2, 16, 96, 128)  # a 768x1024 image's latents
    packed = FluxPipeline._pack_latents(latents, 2, 16, 96, 128)
    assert packed.shape == (2, 48 * 64, 64)
    assert torch.equal(unpack_latents(packed, 768, 1024), latents)


def test_unpack_rejects_latents_of_another_size():
    packed = torch.randn(1, 64 * 64, 64)  # 1024x1024's tokens
    with pytest.raises(ValueError, match="768x1024"):
        unpack_latents(packed, height=1024, width=768)


def test_factors_are_16_by_3():
    assert len(FLUX_LATENT_RGB_FACTORS) == 16
    assert all(len(row) == 3 for row in FLUX_LATENT_RGB_FACTORS)
    assert len(FLUX_LATENT_RGB_BIAS) == 3


def test_latents_to_rgb_dtype_shape_and_range():
    latents = torch.randn(2, 16, 24, 40) * 10  # far outside the clamp range
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (2, 24, 40, 3)
    assert rgb.dtype == torch.uint8
    assert int(rgb.min()) == 0 and int(rgb.max()) == 255  # clamped, not wrapped


def test_latents_to_rgb_is_the_linear_projection():
    # Zero latents give the bias: ((bias + 1) * 127.5) rounded.
    zero = latents_to_rgb(torch.zeros(1, 16, 2, 2))
    expected = [round((b + 1) * 127.5) for b in FLUX_LATENT_RGB_BIAS]
    assert zero[0, 0, 0].tolist() == expected
    # One channel at 1: that channel's row plus the bias.
    one = torch.zeros(1, 16, 1, 1)
    one[0, 9] = 1.0
    row = FLUX_LATENT_RGB_FACTORS[9]
    expected = [round((r + b + 1) * 127.5) for r, b in zip(row, FLUX_LATENT_RGB_BIAS)]
    assert latents_to_rgb(one)[0, 0, 0].tolist() == expected


def test_latents_to_rgb_accepts_bfloat16_and_leaves_input_alone():
    latents = torch.randn(1, 16, 8, 8, dtype=torch.bfloat16)
    before = latents.clone()
    rgb = latents_to_rgb(latents)
    assert rgb.dtype == torch.uint8
    assert torch.equal(latents, before)
    assert torch.equal(rgb, latents_to_rgb(latents.float()))


@pytest.mark.parametrize(
    ("height", "width", "max_side", "size"),
    [
        (576, 1024, 512, (512, 288)),
        (1024, 1024, 512, (512, 512)),
        (1024, 768, 512, (384, 512)),
        (256, 256, 512, (256, 256)),  # never larger than the image
        (1024, 576, 256, (144, 256)),
    ],
)
def test_preview_size(height, width, max_side, size):
    assert preview_size(height, width, max_side) == size


def test_preview_image_1024x576():
    packed = torch.randn(1, (576 // 16) * (1024 // 16), 64)
    image = preview_image(packed, height=576, width=1024)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (512, 288)


def test_preview_image_uses_batch_item_0():
    packed = torch.randn(3, 16 * 16, 64)
    assert np.array_equal(np.asarray(preview_image(packed, 256, 256)),
                          np.asarray(preview_image(packed[:1], 256, 256)))


def test_should_preview_every_n_steps_but_never_the_last():
    def steps(total, every):
        return [step for step in range(total) if should_preview(step, total, every)]

    assert steps(28, 4) == [3, 7, 11, 15, 19, 23]  # 27 would be every 4th but is the last
    assert steps(8, 4) == [3]
    assert steps(4, 1) == [0, 1, 2]
    assert steps(5, 2) == [1, 3]
    assert steps(1, 1) == []
    assert steps(10, 0) == [] and steps(10, -1) == []  # off
    assert steps(3, 5) == []


def test_spread_previews_evenly_never_after_the_last_step():
    assert sorted(spread_previews(28, 3)) == [6, 13, 20]
    assert sorted(spread_previews(4, 2)) == [0, 2]
    assert sorted(spread_previews(4, 3)) == [0, 1, 2]
    assert sorted(spread_previews(2, 3)) == [0]  # fewer steps than previews: one per step before the last
    assert spread_previews(1, 3) == spread_previews(28, 0) == frozenset()


# --- in real pipelines on the tiny family --------------------------------------------------

SIZE = 256
STEPS = 4


@pytest.fixture(scope="module")
def dev_pipe(family):
    pipe = FluxPipeline.from_pretrained(family["dev"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def kontext_pipe(family):
    pipe = FluxKontextPipeline.from_pretrained(family["kontext"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _collecting_callback(previews: list, shapes: list, height: int, width: int):
    def callback(pipe, step, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        shapes.append(tuple(latents.shape))
        previews.append(preview_image(latents, height, width))
        return callback_kwargs

    return callback


def _seeded() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(7)


def _run_with_and_without_previews(pipe, **arguments):
    """(images with a previewing callback, images without, previews, latents shapes)."""
    previews, shapes = [], []
    height, width = arguments["height"], arguments["width"]
    with_previews = pipe(**arguments, generator=_seeded(), output_type="np",
                         callback_on_step_end=_collecting_callback(previews, shapes, height, width)).images
    without = pipe(**arguments, generator=_seeded(), output_type="np").images
    return with_previews, without, previews, shapes


def _assert_previews(previews, shapes, steps, size=SIZE):
    tokens = (size // 16) ** 2
    assert shapes == [(1, tokens, 64)] * steps
    assert len(previews) == steps
    assert all(isinstance(p, Image.Image) and p.mode == "RGB" and p.size == (size, size) for p in previews)


def test_text_to_image_previews_change_nothing(dev_pipe):
    arguments = {"prompt": "a lighthouse at dusk", "height": SIZE, "width": SIZE,
                 "num_inference_steps": STEPS, "guidance_scale": 3.5}
    with_previews, without, previews, shapes = _run_with_and_without_previews(dev_pipe, **arguments)
    _assert_previews(previews, shapes, STEPS)
    assert np.array_equal(with_previews, without)  # identical pixels

    # The last step's preview is of the very latents that get decoded.
    final = dev_pipe(**arguments, generator=_seeded(), output_type="latent").images
    assert np.array_equal(np.asarray(previews[-1]), np.asarray(preview_image(final, SIZE, SIZE)))


def test_image_to_image_previews_change_nothing(dev_pipe):
    pipe = FluxImg2ImgPipeline(**dev_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    arguments = {"prompt": "a lighthouse at dusk", "image": Image.new("RGB", (SIZE, SIZE), (40, 90, 200)),
                 "strength": 0.5, "height": SIZE, "width": SIZE, "num_inference_steps": STEPS,
                 "guidance_scale": 3.5}
    with_previews, without, previews, shapes = _run_with_and_without_previews(pipe, **arguments)
    _assert_previews(previews, shapes, STEPS // 2)  # strength 0.5 runs half the steps
    assert np.array_equal(with_previews, without)


def test_kontext_callback_latents_are_the_output_tokens_only(kontext_pipe):
    # A 3:2 conditioning image is auto-resized to 1248x832: 78*52 = 4056 conditioning tokens,
    # concatenated to the output's 256 only for the transformer call.
    arguments = {"prompt": "make it blue", "image": Image.new("RGB", (300, 200), (200, 120, 40)),
                 "height": SIZE, "width": SIZE, "max_area": SIZE * SIZE,
                 "num_inference_steps": STEPS, "guidance_scale": 2.5}
    seen = []  # what the transformer itself gets: output and conditioning tokens
    hook = kontext_pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["hidden_states"].shape)), with_kwargs=True)
    try:
        with_previews, without, previews, shapes = _run_with_and_without_previews(kontext_pipe, **arguments)
    finally:
        hook.remove()
    assert set(seen) == {(1, 256 + 78 * 52, 64)}
    _assert_previews(previews, shapes, STEPS)  # (1, 256, 64): the output's tokens only
    assert with_previews.shape == (1, SIZE, SIZE, 3)
    assert np.array_equal(with_previews, without)
