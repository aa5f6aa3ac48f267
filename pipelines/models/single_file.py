"""A FLUX transformer from one file: BFL's original `.safetensors` layout (as ComfyUI shares them)
or a GGUF file of it (city96's), loaded with diffusers' `from_single_file`.

A single file holds the transformer's weights only: its config, and every other component (VAE,
text encoders, tokenizers, scheduler), come from a diffusers-layout base repository.
"""

from __future__ import annotations

import os
from typing import Any

import torch

SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf")
FLUX_WIDTH = 3072  # the hidden width diffusers' converter assumes: FLUX.1's


def is_single_file(source: str) -> bool:
    """Whether a model source names one weights file (a path or URL) rather than a repository."""
    return source.lower().endswith(SINGLE_FILE_SUFFIXES)


def is_gguf(source: str) -> bool:
    return source.lower().endswith(".gguf")


def to_diffusers_layout(checkpoint: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers' converter from BFL's key layout. It splits each single block's fused `linear1` at
    FLUX.1's width (3072); at any other width (the demo family's) the split is made here at the
    config's width and the converter is handed a placeholder on the meta device to split instead."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers as convert,
    )

    width = config["num_attention_heads"] * config["attention_head_dim"]
    checkpoint = {key.removeprefix("model.diffusion_model."): value for key, value in checkpoint.items()}
    fused = [key for key in checkpoint if key.startswith("single_blocks.") and ".linear1." in key]
    if width == FLUX_WIDTH or not fused:
        return convert(checkpoint)
    originals = {key: checkpoint[key] for key in fused}
    for key in fused:  # the converter's split sizes add up to 7 widths of 3072 (q, k, v, 4x mlp)
        checkpoint[key] = torch.empty((7 * FLUX_WIDTH, *originals[key].shape[1:]), device="meta")
    converted = convert(checkpoint)
    for key, tensor in originals.items():
        block, suffix = key.split(".")[1], key.rsplit(".", 1)[1]
        parts = torch.split(tensor, (width, width, width, tensor.shape[0] - 3 * width), dim=0)
        for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts):
            converted[f"single_transformer_blocks.{block}.{name}.{suffix}"] = part
    return converted


def read_checkpoint(source: str, local_files_only: bool, token: str | None) -> dict[str, torch.Tensor]:
    """The file's tensors as stored (GGUF ones stay quantized), from a path or the hub."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    return load_single_file_checkpoint(source, local_files_only=local_files_only, token=token)


def load_transformer_file(loader: type, source: str, base: str, dtype: torch.dtype, *,
                          local_files_only: bool, token: str | None = None,
                          quantization_config: Any = None) -> torch.nn.Module:
    """The transformer in `source` (a `.safetensors` or `.gguf` file), configured from `base`'s
    `transformer` subfolder. GGUF weights stay quantized and are dequantized to `dtype` per layer
    as it runs; `quantization_config` (torchao, bitsandbytes) applies to a `.safetensors` file."""
    from diffusers import GGUFQuantizationConfig

    config = loader.load_config(base, subfolder="transformer", local_files_only=local_files_only, token=token)
    checkpoint = to_diffusers_layout(read_checkpoint(source, local_files_only, token), config)
    if is_gguf(source):
        quantization_config = GGUFQuantizationConfig(compute_dtype=dtype)
    # Given in diffusers' layout, from_single_file converts nothing and loads as from a file.
    return loader.from_single_file(checkpoint, config=base, subfolder="transformer", torch_dtype=dtype,
                                   quantization_config=quantization_config, local_files_only=local_files_only,
                                   token=token)


def file_name(source: str) -> str:
    return os.path.basename(source.rstrip("/"))
