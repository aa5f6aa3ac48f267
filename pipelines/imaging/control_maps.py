"""Control maps for structural conditioning: an edge map (Canny) or a depth map from an image.

Both return RGB images of the size asked for, as BFL's control LoRAs were trained on:
white edges on black, and depth with near as bright.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image


def canny_map(image: Image.Image, low_threshold: int, high_threshold: int) -> Image.Image:
    """OpenCV's Canny edges of the image, white on black, as RGB."""
    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, low_threshold, high_threshold)
    return Image.fromarray(edges).convert("RGB")


def normalise_depth(depth: torch.Tensor) -> np.ndarray:
    """A depth (or disparity) tensor of shape (H, W) scaled to 0..255 uint8 over its own range."""
    depth = depth.float()
    low, high = depth.min(), depth.max()
    scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def depth_map(image: Image.Image, estimator, processor, size: tuple[int, int]) -> Image.Image:
    """The estimator's relative depth of the image (Depth Anything predicts disparity: near is
    bright), resized to `size` = (width, height), as RGB."""
    parameter = next(estimator.parameters())
    inputs = processor(images=image.convert("RGB"), return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(parameter.device, parameter.dtype)
    predicted = estimator(pixel_values=pixel_values).predicted_depth  # (1, H', W')
    resized = torch.nn.functional.interpolate(predicted[:, None].float(), size=(size[1], size[0]),
                                              mode="bicubic", align_corners=False)[0, 0]
    return Image.fromarray(normalise_depth(resized)).convert("RGB")
