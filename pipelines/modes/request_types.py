"""The validated, frozen requests: one dataclass per mode, built by `parsing.parse_request`.

A request holds only values already checked against `presets/`: decoded images, resolved
sizes, and (after `with_seed`) the seed actually used.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from PIL import Image

from presets import PRESETS


@dataclass(frozen=True)
class GenerationRequest:
    """Fields every mode shares. `seed` is -1 until `with_seed` resolves it."""

    prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int
    output_format: str
    output_quality: int
    enable_safety_checker: bool
    live_preview: bool
    # The mode of the table the request is for (several modes may share a request type).
    mode: str = field(kw_only=True)
    # Step caching for this request: "auto" (the acceleration profile's default) or a kind.
    step_cache: str = field(default="auto", kw_only=True)
    # LoRAs applied to the dev transformer, as ((name, weight), ...); none for Kontext.
    loras: tuple[tuple[str, float], ...] = field(default=(), kw_only=True)
    # What validation fixed on the way (an animated image's first frame used, ...).
    warnings: tuple[str, ...] = field(default=(), kw_only=True)
    # The input images as given, by field ("image", "mask_image"), before resizing or a canvas:
    # stored with the results so that a restore brings them back.
    inputs: Mapping[str, Image.Image] = field(default_factory=dict, kw_only=True, repr=False, compare=False)

    def seeds(self) -> list[int]:
        """Image i of the request uses seed + i, so each image reproduces on its own."""
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True)
class TextToImageRequest(GenerationRequest):
    negative_prompt: str
    true_cfg_scale: float


@dataclass(frozen=True)
class ImageToImageRequest(GenerationRequest):
    image: Image.Image
    strength: float


@dataclass(frozen=True)
class KontextEditRequest(GenerationRequest):
    image: Image.Image
    negative_prompt: str
    true_cfg_scale: float


@dataclass(frozen=True)
class ReduxVariationRequest(GenerationRequest):
    image: Image.Image
    prompt_embeds_scale: float
    pooled_prompt_embeds_scale: float


# The inpainting fields. Outpainting is inpainting on a padded canvas with the new area masked.
@dataclass(frozen=True)
class InpaintRequest(GenerationRequest):
    image: Image.Image
    mask: Image.Image  # "L", the image's size: white is repainted
    strength: float
    mask_blur: int


@dataclass(frozen=True)
class OutpaintRequest(InpaintRequest):
    expand_left: int
    expand_right: int
    expand_top: int
    expand_bottom: int
    aspect_ratio: str


@dataclass(frozen=True)
class ControlRequest(GenerationRequest):
    image: Image.Image  # what the control map is made from (or, without preprocess, the map)
    control_type: str
    preprocess: bool
    canny_low_threshold: int
    canny_high_threshold: int
    # The edge or depth map, made from `image` when the request runs (depth needs a model).
    control_image: Image.Image | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class ServerCapabilities:
    """What the running server has now that validation depends on."""

    fill: bool = False  # FLUX.1-Fill-dev is configured: inpaint and outpaint run on it
    loras: frozenset[str] = frozenset()  # names of the loaded LoRAs
    # With a compiled transformer: the loaded LoRAs' ranks, and the most one request's may add up to.
    lora_ranks: Mapping[str, int] = field(default_factory=dict, hash=False)
    lora_rank_limit: int | None = None


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """The request with seed -1 replaced by a random seed, so the seed used can be returned."""
    if request.seed != -1:
        return request
    last_base = PRESETS.field("seed").max - (request.num_images - 1)
    return replace(request, seed=secrets.randbelow(int(last_base) + 1))
