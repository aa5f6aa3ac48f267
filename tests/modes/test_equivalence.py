"""The manager adds nothing to the math: each endpoint's PNG equals a plain diffusers pipeline
loaded with `from_pretrained` from the same tiny weights, called with the same arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, call, pixels, result_images
from diffusers import (
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxPriorReduxPipeline,
)
from PIL import Image

STEPS = 3


def generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.fixture(scope="module")
def plain_dev(family):
    return FluxPipeline.from_pretrained(family["dev"], dtype=torch.float32)


def assert_same_pixels(api_result, plain_image):
    ours = pixels(result_images(api_result)[0])
    assert ours.shape == pixels(plain_image).shape
    assert np.array_equal(ours, pixels(plain_image))


def test_text_to_image_equals_plain_flux_pipeline(client, plain_dev):
    args = dict(prompt="a cabin in a pine forest", width=384, height=256, num_inference_steps=STEPS,
                guidance_scale=4.0)
    result = call(client, "/text_to_image", **args, image_size="custom", seed=21)
    assert_same_pixels(result, plain_dev(**args, generator=generator(21)).images[0])


def test_text_to_image_with_true_cfg_equals_plain_flux_pipeline(client, plain_dev):
    args = dict(prompt="a cabin", negative_prompt="fog", true_cfg_scale=2.5, width=256, height=256,
                num_inference_steps=STEPS)
    result = call(client, "/text_to_image", **args, image_size="custom", seed=5)
    assert_same_pixels(result, plain_dev(**args, generator=generator(5)).images[0])


def test_image_to_image_equals_plain_flux_img2img_pipeline(client, family):
    plain = FluxImg2ImgPipeline.from_pretrained(family["dev"], dtype=torch.float32)
    image = Image.open(EXAMPLE_LAKE).convert("RGB")
    args = dict(prompt="a winter lake", strength=0.7, num_inference_steps=STEPS, guidance_scale=3.5)
    result = call(client, "/image_to_image", image=EXAMPLE_LAKE, **args, image_size="match_input", seed=9)
    expected = plain(image=image, width=768, height=512, **args, generator=generator(9)).images[0]
    assert_same_pixels(result, expected)


def test_kontext_edit_equals_plain_flux_kontext_pipeline(client, family):
    plain = FluxKontextPipeline.from_pretrained(family["kontext"], dtype=torch.float32)
    image = Image.open(EXAMPLE_BIRD).convert("RGB")
    args = dict(prompt="make the bird red", num_inference_steps=STEPS, guidance_scale=2.5)
    result = call(client, "/kontext_edit", image=EXAMPLE_BIRD, **args, image_size="match_input", seed=4)
    expected = plain(image=image, width=1024, height=1024, **args, generator=generator(4)).images[0]
    assert_same_pixels(result, expected)


def test_redux_variation_equals_plain_prior_and_flux_pipeline(client, family, plain_dev):
    # As in diffusers' Redux example, with the dev text encoders given to the prior so a
    # prompt can be encoded.
    prior = FluxPriorReduxPipeline.from_pretrained(
        family["redux"], text_encoder=plain_dev.text_encoder, tokenizer=plain_dev.tokenizer,
        text_encoder_2=plain_dev.text_encoder_2, tokenizer_2=plain_dev.tokenizer_2, dtype=torch.float32,
    )
    image = Image.open(EXAMPLE_BIRD).convert("RGB")
    conditioning = prior(image=image, prompt="in watercolor", prompt_embeds_scale=0.9,
                         pooled_prompt_embeds_scale=1.1)
    expected = plain_dev(
        prompt_embeds=conditioning.prompt_embeds, pooled_prompt_embeds=conditioning.pooled_prompt_embeds,
        width=512, height=512, num_inference_steps=STEPS, guidance_scale=2.5, generator=generator(6),
    ).images[0]
    result = call(client, "/redux_variation", image=EXAMPLE_BIRD, prompt="in watercolor", prompt_embeds_scale=0.9,
                  pooled_prompt_embeds_scale=1.1, image_size="square", num_inference_steps=STEPS, seed=6)
    assert_same_pixels(result, expected)
