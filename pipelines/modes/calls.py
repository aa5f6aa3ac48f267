"""Each mode's diffusers call: the keyword arguments a validated request means to its pipeline.

They add nothing to the math: each is one plain diffusers call with the request's values, so
the output equals a diffusers pipeline built from the same weights. Two steps sit around that
call: control requests get their control map first (`with_control_map`), and inpainting keeps
the input's own pixels outside the mask after (`keep_unmasked_pixels`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from PIL import Image

from pipelines.imaging.control_maps import canny_map, depth_map
from pipelines.imaging.masks import keep_unmasked
from pipelines.modes.request_types import (
    ControlRequest,
    GenerationRequest,
    ImageToImageRequest,
    InpaintRequest,
    KontextEditRequest,
    ReduxVariationRequest,
    TextToImageRequest,
)


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


def control_map(request: ControlRequest, components: Mapping[str, Any]) -> Image.Image:
    """The request's control map at the output size: the edge or depth map of its image, or
    the image itself when it already is a map."""
    size = (request.width, request.height)
    if not request.preprocess:
        return request.image.resize(size, Image.Resampling.LANCZOS)
    if request.control_type == "canny":
        resized = request.image.resize(size, Image.Resampling.LANCZOS)
        return canny_map(resized, request.canny_low_threshold, request.canny_high_threshold)
    return depth_map(request.image, components["depth_estimator"], components["depth_processor"], size)


def control_map_components(request: ControlRequest) -> tuple[str, ...]:
    """The components making this request's control map needs: a depth map needs the estimator."""
    return ("depth_estimator", "depth_processor") if request.preprocess and request.control_type == "depth" else ()


def with_control_map(request: ControlRequest, components: Mapping[str, Any]) -> ControlRequest:
    """The request with its control map, made with `components` (see control_map_components)."""
    if request.control_image is not None:
        return request
    return replace(request, control_image=control_map(request, components))


def keep_unmasked_pixels(request: InpaintRequest, image: Image.Image) -> Image.Image:
    """A generated image as inpainting returns it: the input's own pixels outside the mask."""
    return keep_unmasked(request.image, image, request.mask, request.mask_blur)
