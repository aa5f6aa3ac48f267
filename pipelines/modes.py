"""The four modes: each turns a validated request into images with the manager's pipelines.

The manager owns the models; these functions own what a request means to diffusers. They
add nothing to the math: each is one plain diffusers call with the request's values, so
their output equals a diffusers pipeline built from the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from pipelines.manager import PipelineManager
from pipelines.requests import (
    GenerationRequest,
    ImageToImageRequest,
    KontextEditRequest,
    ReduxVariationRequest,
    TextToImageRequest,
)

# Called after every denoising step with (image index, steps done, steps in this image,
# the packed latents), e.g. to report progress or draw a preview.
StepCallback = Callable[[int, int, int, torch.Tensor], None]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on any device."""
    return torch.Generator("cpu").manual_seed(seed)


def _step_callback(on_step: StepCallback | None, image_index: int):
    """A diffusers `callback_on_step_end` that reports progress and changes nothing."""

    def callback(pipe, step: int, timestep, callback_kwargs):
        if on_step is not None:
            on_step(image_index, step + 1, pipe.num_timesteps, callback_kwargs["latents"])
        return callback_kwargs

    return callback


def _shared_arguments(request: GenerationRequest) -> dict:
    return {
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
    }


def _prompted_arguments(request: GenerationRequest) -> dict:
    return {"prompt": request.prompt, **_shared_arguments(request)}


def _negative_arguments(request: TextToImageRequest | KontextEditRequest) -> dict:
    return {"negative_prompt": request.negative_prompt or None, "true_cfg_scale": request.true_cfg_scale}


def text_to_image_arguments(request: TextToImageRequest, conditioners=()) -> dict:
    return {**_prompted_arguments(request), **_negative_arguments(request)}


def image_to_image_arguments(request: ImageToImageRequest, conditioners=()) -> dict:
    return {**_prompted_arguments(request), "image": request.image, "strength": request.strength}


def kontext_edit_arguments(request: KontextEditRequest, conditioners=()) -> dict:
    # Kontext rescales width and height to `max_area` keeping their aspect; giving it the
    # requested area keeps the requested size exact.
    area = request.width * request.height
    return {**_prompted_arguments(request), **_negative_arguments(request), "image": request.image, "max_area": area}


def redux_variation_arguments(request: ReduxVariationRequest, conditioners=()) -> dict:
    """Redux's conditioning from its prior: SigLIP image tokens appended to the encoded prompt
    ("" if none, as BFL's reference encodes it), each scaled; computed once for all images."""
    (prior,) = conditioners
    output = prior(
        image=request.image,
        prompt=request.prompt,
        prompt_embeds_scale=request.prompt_embeds_scale,
        pooled_prompt_embeds_scale=request.pooled_prompt_embeds_scale,
    )
    return {
        "prompt_embeds": output.prompt_embeds,
        "pooled_prompt_embeds": output.pooled_prompt_embeds,
        **_shared_arguments(request),
    }


# Each mode's diffusers call arguments, given the request and the pipelines that run before
# the generating one (Redux's prior).
ARGUMENTS = {
    "text_to_image": text_to_image_arguments,
    "image_to_image": image_to_image_arguments,
    "kontext_edit": kontext_edit_arguments,
    "redux_variation": redux_variation_arguments,
}


@torch.inference_mode()
def generate(
    manager: PipelineManager, request: GenerationRequest, on_step: StepCallback | None = None
) -> list[Image.Image]:
    """Run `request` on the manager's pipelines, one image per seed, holding the accelerator.

    Images are generated one at a time with their own generator, so image i of any request
    is bit-identical to a one-image request with seed + i.
    """
    with manager.lock:
        *conditioners, pipe = manager.enter_mode(request.mode)
        arguments = ARGUMENTS[request.mode](request, conditioners)
        return [
            pipe(
                **arguments,
                generator=seeded_generator(seed),
                callback_on_step_end=_step_callback(on_step, index),
            ).images[0]
            for index, seed in enumerate(request.seeds())
        ]
