"""Where the models come from and where they run: hub ids or local folders, device and dtype.

Every source goes through the same `from_pretrained` code, so a hub id, a local snapshot
and the offline demo family are loaded identically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

DEFAULT_SOURCES = {
    "dev": "black-forest-labs/FLUX.1-dev",
    "kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "redux": "black-forest-labs/FLUX.1-Redux-dev",
    # The NSFW classifier BFL's reference code runs on outputs.
    "safety": "Falconsai/nsfw_image_detection",
    # Structural control: BFL's control LoRAs for the dev transformer, and the depth
    # estimator that makes depth maps (Apache-2.0, unlike the larger Depth Anything models).
    "canny_lora": "black-forest-labs/FLUX.1-Canny-dev-lora",
    "depth_lora": "black-forest-labs/FLUX.1-Depth-dev-lora",
    "depth": "depth-anything/Depth-Anything-V2-Small-hf",
    # FLUX.1-Fill-dev is another 12B transformer: used for inpainting only when configured.
    "fill": "",
}
# Each source can be overridden by this environment variable (and by a flag of app.py).
SOURCE_ENV_VARS = {
    "dev": "FLUX_DEV_MODEL",
    "kontext": "FLUX_KONTEXT_MODEL",
    "redux": "FLUX_REDUX_MODEL",
    "safety": "FLUX_SAFETY_MODEL",
    "canny_lora": "FLUX_CANNY_LORA",
    "depth_lora": "FLUX_DEPTH_LORA",
    "depth": "FLUX_DEPTH_MODEL",
    "fill": "FLUX_FILL_MODEL",
}
# The control LoRA each control type adds to the dev transformer.
CONTROL_MODELS = {"canny": "canny_lora", "depth": "depth_lora"}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class ModelSources:
    """The model repositories (hub ids, local folders or files) and how to name them to users."""

    dev: str = DEFAULT_SOURCES["dev"]
    kontext: str = DEFAULT_SOURCES["kontext"]
    redux: str = DEFAULT_SOURCES["redux"]
    safety: str = DEFAULT_SOURCES["safety"]
    canny_lora: str = DEFAULT_SOURCES["canny_lora"]
    depth_lora: str = DEFAULT_SOURCES["depth_lora"]
    depth: str = DEFAULT_SOURCES["depth"]
    fill: str = DEFAULT_SOURCES["fill"]  # "": not configured
    demo: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: str | None) -> ModelSources:
        """Defaults, then environment variables, then explicit overrides (command-line flags)."""
        values = {key: env.get(var) or DEFAULT_SOURCES[key] for key, var in SOURCE_ENV_VARS.items()}
        values.update({key: value for key, value in overrides.items() if value})
        return cls(**values)

    def model_name(self, key: str) -> str:
        """A repository's name as users know it: the hub id, or a local folder's name."""
        source = getattr(self, key)
        return source.rstrip("/").split("/")[-1] if os.path.isdir(source) else source

    def label(self, models: tuple[str, ...], control: str | None = None) -> str:
        """The models behind a result (source keys, and the control LoRA of `control`), as
        shown with every result; demo weights say so."""
        keys = models + ((CONTROL_MODELS[control],) if control in CONTROL_MODELS else ())
        label = " + ".join(self.model_name(key) for key in keys)
        return f"{label} (demo: tiny random weights)" if self.demo else label

    def as_demo(self, folders: Mapping[str, os.PathLike]) -> ModelSources:
        """These sources with the demo family's folders for every model it has a folder for."""
        return replace(self, demo=True, **{key: str(path) for key, path in folders.items() if key in DEFAULT_SOURCES})


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def pick_placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """CUDA in bfloat16 when present (FLUX's native dtype), else CPU in float32.

    bfloat16 matmuls on most CPUs are emulated and several times slower than float32.
    """
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if dtype in (None, "", "auto"):
        dtype = "bfloat16" if resolved.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or auto, got {dtype!r}")
    return Placement(device=resolved, dtype=DTYPES[dtype])
