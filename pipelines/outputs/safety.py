"""The NSFW safety checker, as BFL's reference code runs it on FLUX.1 outputs.

BFL's flux repository (src/flux/cli.py and the demos) classifies every output with
``pipeline("image-classification", model="Falconsai/nsfw_image_detection")`` and withholds
an image when its "nsfw" score is >= 0.85. This module does the same with the same model,
loaded by ``from_pretrained`` from a hub id or a local folder (the tiny demo family has one),
and scores a whole batch in one forward pass. Flagged images are replaced by `blank_like`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"
DEFAULT_THRESHOLD = 0.85  # BFL's NSFW_THRESHOLD
NSFW_LABEL = "nsfw"


def nsfw_index(id2label: Mapping[int | str, str]) -> int:
    """The logit index of the "nsfw" label. Looked up, never assumed: a fine-tune may order
    its labels either way. Case-insensitive; exactly one label must match."""
    matches = [int(i) for i, label in id2label.items() if str(label).lower() == NSFW_LABEL]
    if len(matches) != 1:
        raise ValueError(f"expected one {NSFW_LABEL!r} label in id2label, got {dict(id2label)}")
    return matches[0]


def nsfw_probabilities(logits: torch.Tensor, index: int) -> list[float]:
    """Softmax over the labels, as the image-classification pipeline does for a
    single-label classifier, and each row's probability of label `index`."""
    return logits.float().softmax(dim=-1)[:, index].tolist()


def blank_like(image: Image.Image) -> Image.Image:
    """What a flagged image is replaced by: same size, plain opaque black RGB, as fal and
    Replicate return. Opaque on purpose: a kept alpha channel would still show the outline."""
    return Image.new("RGB", image.size, (0, 0, 0))


class SafetyChecker:
    """An image classifier that scores images for NSFW content. Loads on first use (or `load()`).

    Not thread-safe by itself: callers hold the accelerator lock around `check`/`flags`.
    """

    def __init__(self, source: str = DEFAULT_SAFETY_MODEL, device: torch.device | str = "cpu",
                 threshold: float = DEFAULT_THRESHOLD, local_files_only: bool = False,
                 token: str | None = None):
        self.source = str(source)
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.local_files_only = local_files_only
        self.token = token
        self.model: torch.nn.Module | None = None
        self.processor: Any = None
        self._index = -1
        self.load_count = 0
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> SafetyChecker:
        """Load the classifier and its image processor now; a no-op once loaded."""
        if self.model is not None:
            return self
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.token:
            kwargs["token"] = self.token
        # Whichever image-processor backend is installed (torchvision, else PIL): both resize
        # and normalise to the same 224x224 input.
        processor = AutoImageProcessor.from_pretrained(self.source, **kwargs)
        # float32 whatever FLUX runs in: the real classifier is small (86M), and its 0.85 threshold
        # was chosen on float32 scores.
        model = AutoModelForImageClassification.from_pretrained(self.source, dtype=torch.float32, **kwargs)
        self._index = nsfw_index(model.config.id2label)  # fails here, early, on a wrong model
        self.processor = processor
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.load_count += 1
        self.load_seconds += time.perf_counter() - started
        return self

    def check(self, images: Sequence[Image.Image]) -> list[float]:
        """Each image's probability of being NSFW, in [0, 1], from one batched forward pass."""
        if not images:
            return []  # nothing to score: don't load the model for it
        self.load()
        # RGB first, as the pipeline's load_image does: RGBA or greyscale would not normalise.
        rgb = [image.convert("RGB") for image in images]
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, torch.float32)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values).logits
        return nsfw_probabilities(logits, self._index)

    def flags(self, images: Sequence[Image.Image], threshold: float | None = None) -> list[bool]:
        """Which images to withhold: NSFW score >= threshold (default: the checker's own)."""
        limit = self.threshold if threshold is None else float(threshold)
        return [score >= limit for score in self.check(images)]

    def status(self) -> dict[str, Any]:
        """State for `/status`. No key is named `path`: gradio_client would take such a dict
        for a file to download."""
        tensors = [*self.model.parameters(), *self.model.buffers()] if self.model is not None else []
        return {
            "source": self.source,
            "loaded": self.loaded,
            "device": str(self.device),
            "threshold": self.threshold,
            "bytes": sum(t.numel() * t.element_size() for t in tensors),
            "load_count": self.load_count,
            "load_seconds": round(self.load_seconds, 3),
        }
