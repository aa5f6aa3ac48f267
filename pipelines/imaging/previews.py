"""Cheap live previews of FLUX latents while they are being denoised.

FLUX pipelines hand `callback_on_step_end(pipe, step, timestep, callback_kwargs)` the
current *packed* latents, ``callback_kwargs["latents"]``: shape (B, (H/16)*(W/16), 64),
16 latent channels x 2x2 patches, in the space the transformer sees,
``(vae_latent - shift_factor) * scaling_factor``. For FluxKontextPipeline these are the
generated image's tokens only: the conditioning image's tokens are concatenated to them
for the transformer call alone, and its output for them is sliced off before the
scheduler step.

A preview is a 16x3 linear projection of those latents to RGB (ComfyUI's "Latent2RGB"),
on the H/8 x W/8 latent grid, scaled up with PIL: no VAE, no model, a few milliseconds.
It shows the noisy sample x_t of the step, not a prediction of the clean image, so early
steps look noisy. The final image is always the exact VAE decode, never a preview.

Wiring, for a pipeline call producing a `height` x `width` image:

    def callback(pipe, step, timestep, callback_kwargs):
        if should_preview(step, pipe.num_timesteps, every=4):
            show(preview_image(callback_kwargs["latents"], height, width))
        return callback_kwargs  # unchanged: previews never alter the result

Every function is pure: tensors in, tensors or images out, inputs left untouched.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline
from PIL import Image

# The FLUX.1 VAE downscales by 8; the transformer packs 2x2 latent pixels into one token.
VAE_SCALE_FACTOR = 8
LATENT_CHANNELS = 16

# Latent -> RGB projection for FLUX.1 latents, rows = the 16 latent channels, columns = R, G, B.
# Source: ComfyUI, comfy/latent_formats.py, class Flux, `latent_rgb_factors` and
# `latent_rgb_factors_bias` (used by latent_preview.py's Latent2RGBPreviewer). ComfyUI samples
# in the space of Flux.process_in, (latent - 0.1159) * 0.3611 -- the VAE's shift_factor and
# scaling_factor, which is exactly the space of diffusers' packed latents -- and its previewer
# applies these factors to the sampler's latents there, with no further shift or scale.
FLUX_LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed tokens -> latent image.

    packed: (B, (H/16)*(W/16), 64) for an H x W (pixel) output.
    returns: (B, 16, H/8, W/8), in packed's dtype and on its device.

    Uses diffusers' own FluxPipeline._unpack_latents, so the layout is the pipelines'.
    """
    tokens = (height // (2 * VAE_SCALE_FACTOR)) * (width // (2 * VAE_SCALE_FACTOR))
    expected = (tokens, 4 * LATENT_CHANNELS)
    if packed.ndim != 3 or tuple(packed.shape[1:]) != expected:
        raise ValueError(
            f"packed latents for {width}x{height} must be (B, {tokens}, 64), got {tuple(packed.shape)}"
        )
    return FluxPipeline._unpack_latents(packed, height, width, VAE_SCALE_FACTOR)


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """Latent image (transformer space) -> approximate RGB, via the 16x3 FLUX factors.

    latents: (B, 16, h, w), any float dtype, any device; scaled as the transformer sees them.
    returns: (B, h, w, 3) uint8 on the same device: projection clamped to [-1, 1], mapped to
             0..255 and rounded (as ComfyUI's preview_to_image).
    """
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors) + bias  # (B, h, w, 3)
    return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def preview_size(height: int, width: int, max_side: int = 512) -> tuple[int, int]:
    """(width, height) of a preview of an H x W image: same aspect, longest side at most
    max_side, never larger than the image itself."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def preview_image(packed: torch.Tensor, height: int, width: int, max_side: int = 512) -> Image.Image:
    """Packed latents -> RGB preview of batch item 0.

    packed: (B, (H/16)*(W/16), 64), as in callback_kwargs["latents"] for an H x W output.
    returns: PIL RGB image of preview_size(H, W, max_side), bilinearly resized from the
             (H/8) x (W/8) latent grid; e.g. 1024x1024 -> 128x128 grid -> 512x512.
    """
    rgb = latents_to_rgb(unpack_latents(packed[:1], height, width))[0]  # (h, w, 3) uint8
    image = Image.fromarray(rgb.cpu().numpy())
    return image.resize(preview_size(height, width, max_side), Image.Resampling.BILINEAR)


def should_preview(step: int, total_steps: int, every: int) -> bool:
    """Whether to emit a preview after 0-based denoising step `step` of `total_steps`:
    after every `every`-th step (steps every-1, 2*every-1, ...), never after the last one
    (its image is the exact VAE decode). every < 1 turns previews off."""
    if every < 1 or step >= total_steps - 1:
        return False
    return (step + 1) % every == 0


def spread_previews(total_steps: int, count: int) -> frozenset[int]:
    """The 0-based denoising steps after which to emit `count` previews spread evenly over
    `total_steps`, never after the last one (its image is the exact decode). Fewer steps
    than previews asked for give fewer previews."""
    if total_steps < 2:
        return frozenset()
    return frozenset(min(max(round(total_steps * k / (count + 1)), 1), total_steps - 1) - 1
                     for k in range(1, count + 1))
