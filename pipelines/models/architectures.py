"""The full-size architectures, declared once, and their sizes counted without any weights.

Each config below is the hub's config.json of the repository that `sources.DEFAULT_SOURCES`
names (the values that shape the weights; the rest are the classes' defaults):

- FLUX.1-dev `transformer/config.json` (FLUX.1-Kontext-dev's is the same); FLUX.1-Fill-dev's
  differs only in `in_channels` 384 (the image, the mask and the masked image's latents) and
  `out_channels` 64.
- FLUX.1-dev `vae/config.json`, `text_encoder/config.json` (CLIP ViT-L/14's text model) and
  `text_encoder_2/config.json` (T5 v1.1 XXL's encoder).
- FLUX.1-Redux-dev `image_encoder/config.json` (google/siglip-so400m-patch14-384's vision
  model) and `image_embedder/config.json`.
- depth-anything/Depth-Anything-V2-Small-hf `config.json` (a DINOv2-small backbone).

Models are built on the meta device: parameters have shapes and no storage, so counting the
11.9B parameters of a FLUX transformer takes a fraction of a second and no memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from transformers import AutoConfig

from pipelines.models.components import COMPONENTS
from pipelines.models.sources import ModelSources

FLUX_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}
FLUX_FILL_TRANSFORMER = {**FLUX_TRANSFORMER, "in_channels": 384, "out_channels": 64}
FLUX_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "force_upcast": True, "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}
T5_XXL_ENCODER = {
    "model_type": "t5", "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
    "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
}
CLIP_L_TEXT = {
    "model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
SIGLIP_SO400M_VISION = {
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
    "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14, "image_size": 384,
}
REDUX_EMBEDDER = {"redux_dim": 1152, "txt_in_features": 4096}
DEPTH_ANYTHING_V2_SMALL = {
    "model_type": "depth_anything", "reassemble_hidden_size": 384, "neck_hidden_sizes": [48, 96, 192, 384],
    "fusion_hidden_size": 64, "head_hidden_size": 32, "depth_estimation_type": "relative",
    "backbone_config": {"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6,
                        "num_hidden_layers": 12, "patch_size": 14, "image_size": 518, "out_indices": [3, 6, 9, 12],
                        "reshape_hidden_states": False},
}
T5_TOKENS = 512  # FluxPipeline's max_sequence_length
MLP_RATIO = 4  # both FLUX block kinds: FeedForward's default mult, FluxSingleTransformerBlock's mlp_ratio


def image_tokens(width: int, height: int) -> int:
    """Packed latent tokens of a FLUX transformer: the VAE's 8x downscale, then 2x2 patches."""
    return (width // 16) * (height // 16)


# Per component of `components.COMPONENTS` (the weight-holding ones), its full-size config.
FULL_SIZE_CONFIGS: Mapping[str, dict] = {
    "transformer": FLUX_TRANSFORMER, "kontext_transformer": FLUX_TRANSFORMER,
    "fill_transformer": FLUX_FILL_TRANSFORMER, "vae": FLUX_VAE, "text_encoder": CLIP_L_TEXT,
    "text_encoder_2": T5_XXL_ENCODER, "image_encoder": SIGLIP_SO400M_VISION, "image_embedder": REDUX_EMBEDDER,
    "depth_estimator": DEPTH_ANYTHING_V2_SMALL,
}


@dataclass(frozen=True)
class ComponentSize:
    """What a component's weights are, counted on its architecture."""

    params: int  # floating-point parameters and buffers
    linear_params: int  # of them, linear layers' weights: what quantization stores in fewer bits
    offload_params: int  # the most parameters group offloading holds on the accelerator at once


def _is_diffusers(loader: type) -> bool:
    return issubclass(loader, ConfigMixin)


def build_on_meta(loader: type, config: Any) -> torch.nn.Module:
    """`loader`'s model from `config` (a diffusers config dict, or a transformers config) with
    every tensor on the meta device."""
    with torch.device("meta"):
        if _is_diffusers(loader) or hasattr(loader, "from_config"):  # diffusers models, transformers' Auto classes
            return loader.from_config(config)
        return loader._from_config(config)


def declared_config(name: str) -> Any:
    """The full-size config of component `name`, as its loader takes it."""
    config = FULL_SIZE_CONFIGS[name]
    return dict(config) if _is_diffusers(COMPONENTS[name].loader) else AutoConfig.for_model(**config)


def folder_config(name: str, source: str | os.PathLike) -> Any:
    """The config of component `name` in a local model folder (the demo family's)."""
    spec = COMPONENTS[name]
    subfolder = {"subfolder": spec.subfolder} if spec.subfolder else {}
    if _is_diffusers(spec.loader):
        return spec.loader.load_config(source, **subfolder)
    return AutoConfig.from_pretrained(source, **subfolder)


def _numel(module: torch.nn.Module, counted: set[int]) -> int:
    """Parameters of `module` not in `counted` yet (tied weights, such as T5's embedding, once)."""
    fresh = [p for p in module.parameters() if id(p) not in counted]
    counted.update(id(p) for p in fresh)
    return sum(p.numel() for p in fresh)


def offload_groups(module: torch.nn.Module, block_modules: set[str] | None = None,
                   counted: set[int] | None = None) -> list[int]:
    """Parameters of each group diffusers' block-level group offloading moves at once
    (`_apply_group_offloading_block_level`): each child of a top-level ModuleList or Sequential,
    the groups of the children a model names in `_group_offload_block_modules` (the VAE's encoder
    and decoder), and everything else as one group (all of T5's encoder stack, for example)."""
    if block_modules is None:
        block_modules = set(getattr(module, "_group_offload_block_modules", None) or ())
    counted = set() if counted is None else counted
    groups, rest = [], 0
    for name, child in module.named_children():
        if name in block_modules:
            groups += offload_groups(child, block_modules, counted)
        elif isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            groups += [_numel(block, counted) for block in child]
        else:
            rest += _numel(child, counted)
    rest += sum(p.numel() for p in module.parameters(recurse=False) if id(p) not in counted)
    return groups + [rest] if rest else groups


def onloaded_at_once(groups: list[int]) -> int:
    """The two largest groups: with a CUDA stream, the next group is prefetched while one runs."""
    return sum(sorted(groups, reverse=True)[:2])


def measure(module: torch.nn.Module) -> ComponentSize:
    """A (meta) module's floating-point parameters and buffers, the part in linear layers'
    weights (what quantization stores in fewer bits) and what group offloading holds at once."""
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    tensors = sum(t.numel() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())
    return ComponentSize(params=tensors, linear_params=linear, offload_params=onloaded_at_once(offload_groups(module)))


def weight_components(sources: ModelSources) -> list[str]:
    """The weight-holding components of the models `sources` configures (Fill only when given)."""
    return [name for name, spec in COMPONENTS.items() if spec.module and getattr(sources, spec.source)]


def component_config(name: str, sources: ModelSources) -> Any:
    """Component `name`'s config: the demo family's from its folder, the full-size one declared here
    (known before anything is downloaded)."""
    return folder_config(name, sources.repository(COMPONENTS[name].source)) if sources.demo else declared_config(name)


def component_sizes(sources: ModelSources) -> dict[str, ComponentSize]:
    """The size of every weight-holding component `sources` configures, counted on the meta device."""
    return {name: measure(build_on_meta(COMPONENTS[name].loader, component_config(name, sources)))
            for name in weight_components(sources)}
