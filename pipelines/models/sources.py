"""Where the models come from and where they run: hub ids or local folders, device and dtype.

Every source goes through the same `from_pretrained` code, so a hub id, a local snapshot
and the offline demo family are loaded identically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from pipelines.models.single_file import is_single_file

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
# Where a single transformer file (`.safetensors`, `.gguf`) of a source takes its transformer config
# from: dev's base also gives the VAE, text encoders, tokenizers and scheduler (flag --base-model).
DEFAULT_BASES = {"dev": DEFAULT_SOURCES["dev"], "kontext": DEFAULT_SOURCES["kontext"],
                 "fill": "black-forest-labs/FLUX.1-Fill-dev"}
BASE_ENV_VAR = "FLUX_BASE_MODEL"
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
    base: str = DEFAULT_BASES["dev"]  # dev's base when dev is a single transformer file
    kontext_base: str = DEFAULT_BASES["kontext"]
    fill_base: str = DEFAULT_BASES["fill"]
    demo: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: str | None) -> ModelSources:
        """Defaults, then environment variables, then explicit overrides (command-line flags)."""
        values = {key: env.get(var) or DEFAULT_SOURCES[key] for key, var in SOURCE_ENV_VARS.items()}
        values["base"] = env.get(BASE_ENV_VAR) or DEFAULT_BASES["dev"]
        values.update({key: value for key, value in overrides.items() if value})
        return cls(**values)

    def base_of(self, key: str) -> str:
        """The diffusers-layout repository a single transformer file of `key` is configured from."""
        return self.base if key == "dev" else getattr(self, f"{key}_base")

    def repository(self, key: str) -> str:
        """Where `from_pretrained` loads `key`'s components: its source, or, when that is a single
        transformer file, its base."""
        source = getattr(self, key)
        return self.base_of(key) if key in DEFAULT_BASES and is_single_file(source) else source

    def model_name(self, key: str) -> str:
        """A repository's name as users know it: the hub id, or a local folder's or file's name."""
        source = getattr(self, key)
        local = os.path.isdir(source) or os.path.isfile(source)
        return source.rstrip("/").split("/")[-1] if local else source

    def label(self, models: tuple[str, ...], control: str | None = None) -> str:
        """The models behind a result (source keys, and the control LoRA of `control`), as
        shown with every result; demo weights say so."""
        keys = models + ((CONTROL_MODELS[control],) if control in CONTROL_MODELS else ())
        label = " + ".join(self.model_name(key) for key in keys)
        return f"{label} (demo: tiny random weights)" if self.demo else label

    def as_demo(self, folders: Mapping[str, os.PathLike]) -> ModelSources:
        """These sources with the demo family's folders for every model it has a folder for."""
        demo = {key: str(path) for key, path in folders.items() if key in DEFAULT_SOURCES}
        bases = {"base": demo["dev"], **{f"{key}_base": demo[key] for key in ("kontext", "fill") if key in demo}}
        return replace(self, demo=True, **demo, **bases)


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
