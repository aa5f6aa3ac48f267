"""Running a mode's diffusers call on pipelines the caller hands in, one image per seed.

Nothing here reaches for the manager: the pipelines, the step cache to use and whether the
transformer is float8 come in with the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pipelines.models.acceleration import request_cache
from pipelines.modes.request_types import GenerationRequest
from pipelines.modes.table import Mode

# Called after every denoising step with (image index, steps done, steps in this image,
# the packed latents), e.g. to report progress or draw a preview.
StepCallback = Callable[[int, int, int, torch.Tensor], None]


@dataclass(frozen=True)
class StepCache:
    """The request's step caching: its kind (None: off) and whether the transformer is float8
    (which changes the threshold)."""

    kind: str | None = None
    float8: bool = False


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same noise on any device."""
    return torch.Generator("cpu").manual_seed(seed)


def step_callback(on_step: StepCallback | None, image_index: int):
    """A diffusers `callback_on_step_end` that reports progress and changes nothing."""

    def callback(pipe, step: int, timestep, callback_kwargs):
        if on_step is not None:
            on_step(image_index, step + 1, pipe.num_timesteps, callback_kwargs["latents"])
        return callback_kwargs

    return callback


def uses_true_cfg(request: GenerationRequest) -> bool:
    return bool(getattr(request, "negative_prompt", "")) and getattr(request, "true_cfg_scale", 1.0) > 1


@torch.inference_mode()
def generate(mode: Mode, pipes: Sequence, request: GenerationRequest, on_step: StepCallback | None = None,
             cache: StepCache = StepCache()) -> list[Image.Image]:
    """Run `request` on `pipes` (the mode's route, the generating pipeline last), one image
    per seed. Call with the accelerator held.

    Images are generated one at a time with their own generator, so image i of any request
    is bit-identical to a one-image request with seed + i.
    """
    *conditioners, pipe = pipes
    arguments = mode.call_arguments(request, tuple(conditioners))
    finish = mode.finish or (lambda request, image: image)
    with request_cache(pipe, cache.kind, float8=cache.float8, true_cfg=uses_true_cfg(request)):
        return [
            finish(request, pipe(
                **arguments,
                generator=seeded_generator(seed),
                callback_on_step_end=step_callback(on_step, index),
            ).images[0])
            for index, seed in enumerate(request.seeds())
        ]
