"""Tiny random weights for the adapter modes, in the hub's layouts: FLUX.1 Fill (inpaint and
outpaint), BFL's Canny and Depth control LoRAs with the depth estimator that makes their depth
maps, and style LoRAs in the two formats users bring. Built by ``tiny_family`` with the same
rules: real channel counts and key names, shrunk widths, fixed seeds, byte-identical rebuilds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
)

from pipelines.demo_family.base_models import (
    CLIP_DIM,
    HEAD_DIM,
    REPOS,
    flux_index,
    flux_transformer,
    save_model,
)
from pipelines.demo_family.tokenizers import write_json

RANK = 4  # real: 128 (control LoRAs), 4..64 (style LoRAs)
LORA_SCALE = 1.0  # std of a LoRA delta's output for unit inputs (base layers': 0.6): shows clearly
CONTROL_GAIN = 8  # on the control image's share of x_embedder's lora_A: so that it shows in 2 steps

# The target modules of diffusers' train_dreambooth_lora_flux.py when --lora_layers is not given.
TRAINING_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]


def build_adapters(tmp: Path) -> None:
    """Write the adapter folders next to the already built FLUX.1-dev in ``tmp``."""
    dev = tmp / REPOS["dev"]
    _build_fill(dev, tmp / REPOS["fill"])
    _save_control_lora(tmp / REPOS["canny_lora"] / "flux1-canny-dev-lora.safetensors", seed=6)
    _save_control_lora(tmp / REPOS["depth_lora"] / "flux1-depth-dev-lora.safetensors", seed=7)
    _build_depth_estimator(tmp / REPOS["depth"])
    loras = tmp / REPOS["loras"]
    _save_peft_lora(loras / "tiny-style-lora")
    _save_kohya_lora(loras / "tiny-kohya-style.safetensors")


# --- FLUX.1 Fill ----------------------------------------------------------------------------

def _build_fill(dev: Path, fill: Path) -> None:
    # Like Kontext: dev's files and its own transformer. Fill's takes 384 channels per packed
    # token: 64 noisy latents + 64 latents of the masked image + 256 = the 8x8 mask pixels under
    # each latent pixel, 2x2-packed. It predicts the 64 latent channels only.
    shutil.copytree(dev, fill)
    write_json(fill / "model_index.json", flux_index("FluxFillPipeline"))
    shutil.rmtree(fill / "transformer")
    save_model(flux_transformer(seed=5, in_channels=384, out_channels=64), fill / "transformer", shards=3)


# --- LoRAs --------------------------------------------------------------------------------

def _meta_transformer(in_channels: int = 64) -> torch.nn.Module:
    """The tiny transformer's modules without weights, for names and shapes; the RNG is left as it was."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        return flux_transformer(seed=0, in_channels=in_channels, out_channels=64)


def _linear_shapes(in_channels: int = 64) -> dict[str, tuple[int, int]]:
    """(out, in) of every nn.Linear of the tiny transformer, by module name, in module order."""
    return {name: tuple(module.weight.shape) for name, module in _meta_transformer(in_channels).named_modules()
            if isinstance(module, torch.nn.Linear)}


def _lora_pair(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    # lora_B @ lora_A maps unit inputs to outputs of std LORA_SCALE.
    down = torch.randn(RANK, in_features) / in_features**0.5
    up = torch.randn(out_features, RANK) * LORA_SCALE / RANK**0.5
    return down, up


# BFL's checkpoints fuse q, k and v (single blocks: and the MLP input) into one linear, hence one
# lora_A that diffusers' converter copies to each part; these name the part that draws it.
_FUSED_WITH = [
    (re.compile(r"attn\.to_[kv]$"), "attn.to_q"),
    (re.compile(r"attn\.add_[kv]_proj$"), "attn.add_q_proj"),
    (re.compile(r"(single_transformer_blocks\.\d+\.)proj_mlp$"), r"\1attn.to_q"),
]


def _fused_with(name: str) -> str:
    for pattern, replacement in _FUSED_WITH:
        name = pattern.sub(replacement, name)
    return name


def _control_lora(seed: int) -> dict[str, torch.Tensor]:
    """A structural-control LoRA for the tiny dev transformer, as diffusers converts BFL's
    flux1-{canny,depth}-dev-lora.safetensors (``_convert_bfl_flux_control_lora_to_diffusers``).

    Every nn.Linear gets lora_A, lora_B and a lora_B bias; x_embedder's lora_A takes 128 input
    features (64 latent + 64 control channels), which makes diffusers widen x_embedder; the q/k
    norms' scales are full weights. The real file uses BFL's names (double_blocks.0.img_attn.qkv.
    lora_A.weight, ...query_norm.scale), but diffusers' converter hard-codes the full model's 19 + 38
    blocks and 3072 width, so a tiny file can only be stored in the converter's output format.
    """
    torch.manual_seed(seed)
    tensors, downs = {}, {}
    for name, (out_features, in_features) in _linear_shapes(in_channels=128).items():
        down, up = _lora_pair(out_features, in_features)
        if name == "x_embedder":  # in: 64 packed latent channels, then 64 packed control channels
            down[:, 64:] *= CONTROL_GAIN
        down = downs.setdefault(_fused_with(name), down)
        tensors[f"transformer.{name}.lora_A.weight"] = down.clone()  # safetensors refuses shared storage
        tensors[f"transformer.{name}.lora_B.weight"] = up
        tensors[f"transformer.{name}.lora_B.bias"] = torch.randn(out_features) * 0.02
    norms = [name for name, _ in _meta_transformer().named_parameters()
             if name.split(".")[-2] in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
    for name in norms:  # RMSNorm scales, fine-tuned around their initial 1
        tensors[f"transformer.{name}"] = 1 + 0.1 * torch.randn(HEAD_DIM)
    return {key: value.to(torch.bfloat16) for key, value in tensors.items()}  # bf16, as the real ones


def _save_control_lora(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_control_lora(seed), path, metadata={"format": "pt"})


def _save_peft_lora(folder: Path) -> None:
    """What diffusers' Flux DreamBooth LoRA script writes: pytorch_lora_weights.safetensors with
    transformer.<module>.lora_A/lora_B.weight keys and the LoraConfig as metadata, plus a card."""
    torch.manual_seed(9)
    layers = {}
    for name, (out_features, in_features) in _linear_shapes().items():
        if any(name == target or name.endswith("." + target) for target in TRAINING_TARGETS):
            layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = (
                t.to(torch.bfloat16) for t in _lora_pair(out_features, in_features))
    config = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TRAINING_TARGETS)
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])  # a set: sorted for stable bytes
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers,
                                   transformer_lora_adapter_metadata=metadata)
    _sort_metadata(folder / "pytorch_lora_weights.safetensors")
    (folder / "README.md").write_text(STYLE_LORA_CARD)


STYLE_LORA_CARD = """\
---
base_model: black-forest-labs/FLUX.1-dev
library_name: diffusers
license: other
instance_prompt: in tiny style
tags:
- text-to-image
- diffusers-training
- diffusers
- lora
- flux
- template:sd-lora
---

# tiny-style-lora

A random-weight LoRA for the tiny FLUX.1 [dev] test model of FLUX Playground, in the layout of a
LoRA trained with diffusers' `train_dreambooth_lora_flux.py`. It has no style: it only changes
the images. Trigger words: `in tiny style`.
"""


# kohya's sd-scripts (networks/lora_flux.py) names: lora_unet_ + the BFL module path with "_".
KOHYA_DOUBLE = {  # BFL layer -> the diffusers modules it stands for (qkv: fused in BFL)
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "img_attn_proj": ["attn.to_out.0"],
    "img_mlp_0": ["ff.net.0.proj"],
    "img_mlp_2": ["ff.net.2"],
    "img_mod_lin": ["norm1.linear"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "txt_attn_proj": ["attn.to_add_out"],
    "txt_mlp_0": ["ff_context.net.0.proj"],
    "txt_mlp_2": ["ff_context.net.2"],
    "txt_mod_lin": ["norm1_context.linear"],
}
# Not linear1 (q, k, v and MLP input fused): diffusers splits it at the full model's widths.
KOHYA_SINGLE = {"linear2": ["proj_out"], "modulation_lin": ["norm.linear"]}
KOHYA_CLIP = ["self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
              "mlp_fc1", "mlp_fc2"]
KOHYA_ALPHA = RANK / 2  # scale alpha / rank = 0.5, applied by diffusers' converter


def _save_kohya_lora(path: Path) -> None:
    """A single-file LoRA as kohya's sd-scripts (and ComfyUI) save it: lora_down/lora_up/alpha per
    layer of the transformer (lora_unet_...) and of CLIP-L (lora_te1_...), bf16."""
    torch.manual_seed(10)
    shapes, tensors = _linear_shapes(), {}

    def add(key: str, out_features: int, in_features: int) -> None:
        down, up = _lora_pair(out_features, in_features)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up / (KOHYA_ALPHA / RANK)  # the same delta after scaling
        tensors[f"{key}.alpha"] = torch.tensor(KOHYA_ALPHA)

    for prefix, block, layers in (("double_blocks_0", "transformer_blocks.0", KOHYA_DOUBLE),
                                  ("single_blocks_0", "single_transformer_blocks.0", KOHYA_SINGLE)):
        for layer, modules in layers.items():
            parts = [shapes[f"{block}.{module}"] for module in modules]
            add(f"lora_unet_{prefix}_{layer}", sum(out for out, _ in parts), parts[0][1])
    clip_shapes = {"mlp_fc1": (4 * CLIP_DIM, CLIP_DIM), "mlp_fc2": (CLIP_DIM, 4 * CLIP_DIM)}
    for i in range(2):  # the tiny CLIP's 2 layers
        for layer in KOHYA_CLIP:
            out_features, in_features = clip_shapes.get(layer, (CLIP_DIM, CLIP_DIM))
            add(f"lora_te1_text_model_encoder_layers_{i}_{layer}", out_features, in_features)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.to(torch.bfloat16) for key, value in tensors.items()}, path, metadata={
        "ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux",
        "ss_network_dim": str(RANK), "ss_network_alpha": str(KOHYA_ALPHA),
        "ss_output_name": "tiny-kohya-style", "modelspec.architecture": "flux-1-dev/lora",
    })
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite a .safetensors header with its metadata sorted: safetensors writes the metadata in
    hash-map order, which differs from run to run (the tensors' entries are in a fixed order)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


# --- Depth Anything V2 Small ------------------------------------------------------------------

# depth-anything/Depth-Anything-V2-Small-hf's, verbatim: keeps the aspect ratio, the short side 518,
# both sides multiples of 14. (The key list was written by the transformers version that saved it.)
DEPTH_PREPROCESSOR = {
    "_valid_processor_keys": [
        "images", "do_resize", "size", "keep_aspect_ratio", "ensure_multiple_of", "resample",
        "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad",
        "size_divisor", "return_tensors", "data_format", "input_data_format",
    ],
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 518, "width": 518},
    "size_divisor": None,
}


def _build_depth_estimator(folder: Path) -> None:
    # Real: DINOv2-S (hidden 384, 6 heads, 12 layers, features of layers 3/6/9/12), neck widths
    # 48/96/192/384, fusion 64, head 32. Here widths / 12 (fusion 8, head 4) and 4 layers, all
    # four as features. The real image size 518 stays: a depth map takes about 0.2 s on a CPU.
    # float32, like the hub's file.
    torch.manual_seed(8)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=Dinov2Config(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=4,
            image_size=518, patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
        ),
        patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[4, 8, 16, 32],
        fusion_hidden_size=8, head_hidden_size=4, depth_estimation_type="relative",
    ))
    # The library's init (std 0.02) fades the signal to nothing before the final ReLU: all-zero
    # depth. PyTorch's default conv init keeps it, and a bias keeps every pixel above the ReLU.
    for module in [*model.neck.modules(), *model.head.modules()]:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    with torch.no_grad():
        model.head.conv3.bias += 0.5
    model.save_pretrained(folder)
    write_json(folder / "preprocessor_config.json", DEPTH_PREPROCESSOR)
