"""The modes: each turns a validated request into images with the manager's pipelines.

The manager owns the models; these functions own what a request means to diffusers. They
add nothing to the math: each is one plain diffusers call with the request's values, so
their output equals a diffusers pipeline built from the same weights. Two steps sit around
that call: control requests get their control map first (`prepare`), and inpainting keeps
the input's own pixels outside the mask after (`finish`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from PIL import Image

from pipelines.acceleration import request_cache, request_cache_kind
from pipelines.control_maps import canny_map, depth_map
from pipelines.manager import PipelineManager
from pipelines.masks import keep_unmasked
from pipelines.requests import (
    ControlRequest,
    GenerationRequest,
    ImageToImageRequest,
    InpaintRequest,
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


def inpaint_arguments(request: InpaintRequest, conditioners=()) -> dict:
    """FluxInpaintPipeline's and FluxFillPipeline's arguments (they take the same ones)."""
    return {**_prompted_arguments(request), "image": request.image, "mask_image": request.mask,
            "strength": request.strength}


def control_arguments(request: ControlRequest, conditioners=()) -> dict:
    return {**_prompted_arguments(request), "control_image": request.control_image}


# Each mode's diffusers call arguments, given the request and the pipelines that run before
# the generating one (Redux's prior).
ARGUMENTS = {
    "text_to_image": text_to_image_arguments,
    "image_to_image": image_to_image_arguments,
    "kontext_edit": kontext_edit_arguments,
    "redux_variation": redux_variation_arguments,
    "inpaint": inpaint_arguments,
    "outpaint": inpaint_arguments,
    "control": control_arguments,
}


def control_image_for(manager: PipelineManager, request: ControlRequest) -> Image.Image:
    """The request's control map at the output size: the edge or depth map of its image, or
    the image itself when it already is a map."""
    size = (request.width, request.height)
    if not request.preprocess:
        return request.image.resize(size, Image.Resampling.LANCZOS)
    if request.control_type == "canny":
        resized = request.image.resize(size, Image.Resampling.LANCZOS)
        return canny_map(resized, request.canny_low_threshold, request.canny_high_threshold)
    estimator, processor = manager.component("depth_estimator"), manager.component("depth_processor")
    return depth_map(request.image, estimator, processor, size)


def prepare(manager: PipelineManager, request: GenerationRequest) -> GenerationRequest:
    """The request with what it needs computed before generation (a control request's map).
    Call with the manager's lock held: the depth estimator runs on the accelerator."""
    if isinstance(request, ControlRequest) and request.control_image is None:
        return replace(request, control_image=control_image_for(manager, request))
    return request


def finish(request: GenerationRequest, image: Image.Image) -> Image.Image:
    """A generated image as the mode returns it: inpainting keeps the input outside the mask."""
    if isinstance(request, InpaintRequest):
        return keep_unmasked(request.image, image, request.mask, request.mask_blur)
    return image


@torch.inference_mode()
def generate(
    manager: PipelineManager, request: GenerationRequest, on_step: StepCallback | None = None
) -> list[Image.Image]:
    """Run `request` on the manager's pipelines, one image per seed, holding the accelerator.

    Images are generated one at a time with their own generator, so image i of any request
    is bit-identical to a one-image request with seed + i.
    """
    with manager.lock:
        request = prepare(manager, request)
        *conditioners, pipe = manager.enter_mode(request.mode, getattr(request, "control_type", None),
                                                 request.loras)
        arguments = ARGUMENTS[request.mode](request, conditioners)
        with step_caching(manager, request, pipe):
            return [
                finish(request, pipe(
                    **arguments,
                    generator=seeded_generator(seed),
                    callback_on_step_end=_step_callback(on_step, index),
                ).images[0])
                for index, seed in enumerate(request.seeds())
            ]


def step_caching(manager: PipelineManager, request: GenerationRequest, pipe):
    """The request's step caching on the pipeline's transformer, off again afterwards."""
    requested = None if request.step_cache == "auto" else request.step_cache
    kind = request_cache_kind(manager.acceleration, requested)
    float8 = manager.transformer_report(manager.mode_transformer(request.mode)).get("float8", False)
    true_cfg = bool(getattr(request, "negative_prompt", "")) and getattr(request, "true_cfg_scale", 1.0) > 1
    return request_cache(pipe, kind, float8=float8, true_cfg=true_cfg)
