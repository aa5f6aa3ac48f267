"""The demo family's base models: tiny random-weight FLUX.1-dev, -Kontext-dev, -Redux-dev and
the NSFW classifier, saved in the hub repositories' layouts (see `family.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
)

from pipelines.demo_family.tokenizers import (
    clip_vocab_size,
    t5_token_count,
    write_clip_tokenizer,
    write_json,
    write_t5_tokenizer,
)

REPOS = {"dev": "FLUX.1-dev", "kontext": "FLUX.1-Kontext-dev", "redux": "FLUX.1-Redux-dev",
         "safety": "nsfw_image_detection",
         # Built by adapters.py: the weights of the inpaint/outpaint, control and LoRA modes.
         "fill": "FLUX.1-Fill-dev", "canny_lora": "FLUX.1-Canny-dev-lora",
         "depth_lora": "FLUX.1-Depth-dev-lora", "depth": "Depth-Anything-V2-Small-hf", "loras": "loras"}

# Tiny widths. Heads/dims chosen so every divisibility rule of the real models holds.
CLIP_DIM, T5_DIM, SIGLIP_DIM, VIT_DIM = 32, 32, 32, 32
HEAD_DIM, AXES_DIMS_ROPE = 16, [4, 6, 6]  # rope axes must sum to the head dim (real: 128 = 16+56+56)


def build_base_models(tmp: Path) -> None:
    dev, kontext, redux = (tmp / REPOS[key] for key in ("dev", "kontext", "redux"))
    # Fixed seeds per component; configs saved by the libraries carry their versions, as on the hub.
    write_json(dev / "model_index.json", flux_index("FluxPipeline"))
    write_json(dev / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_clip_tokenizer(dev / "tokenizer")
    write_t5_tokenizer(dev / "tokenizer_2")
    torch.manual_seed(0)
    save_model(_clip_text_model(), dev / "text_encoder")
    save_model(_t5_encoder(), dev / "text_encoder_2", shards=2)  # the hub's T5 comes in 2 shards
    save_model(_vae(), dev / "vae")
    save_model(flux_transformer(seed=1), dev / "transformer", shards=3)

    # Kontext: its own transformer, everything else is byte-identical to dev (as on the hub).
    shutil.copytree(dev, kontext)
    index = flux_index("FluxKontextPipeline")
    index.update(feature_extractor=[None, None], image_encoder=[None, None])  # optional IP-Adapter slots
    write_json(kontext / "model_index.json", index)
    shutil.rmtree(kontext / "transformer")
    save_model(flux_transformer(seed=2), kontext / "transformer", shards=3)

    write_json(redux / "model_index.json", {
        "_class_name": "FluxPriorReduxPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": ["transformers", "SiglipImageProcessor"],
        # "flux" = the diffusers.pipelines.flux module, where ReduxImageEncoder lives.
        "image_embedder": ["flux", "ReduxImageEncoder"],
        "image_encoder": ["transformers", "SiglipVisionModel"],
    })
    write_json(redux / "feature_extractor" / "preprocessor_config.json", SIGLIP_PREPROCESSOR)
    torch.manual_seed(3)
    save_model(_siglip_vision(), redux / "image_encoder")
    save_model(ReduxImageEncoder(redux_dim=SIGLIP_DIM, txt_in_features=T5_DIM), redux / "image_embedder")

    # The NSFW classifier: one flat folder, weights in float32 as on the hub.
    safety = tmp / REPOS["safety"]
    write_json(safety / "preprocessor_config.json", VIT_PREPROCESSOR)
    torch.manual_seed(4)
    _nsfw_classifier().save_pretrained(safety)


# --- configs that are copied from the hub verbatim -------------------------------------------

SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

SIGLIP_PREPROCESSOR = {
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 384, "width": 384},
}

# Falconsai/nsfw_image_detection's, which is google/vit-base-patch16-224-in21k's.
VIT_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}


def flux_index(class_name: str) -> dict:
    return {
        "_class_name": class_name,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


# --- models -------------------------------------------------------------------------------

def _clip_text_model() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab_size(),
        hidden_size=CLIP_DIM, intermediate_size=4 * CLIP_DIM, projection_dim=CLIP_DIM,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
        # The real config's ids: eos_token_id 2 selects the legacy pooling (argmax of the ids),
        # which is right because <|endoftext|> is the highest id, as in the real vocab.
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))


def _t5_encoder() -> T5EncoderModel:
    n_tokens = t5_token_count()
    return T5EncoderModel(T5Config(
        vocab_size=-(-n_tokens // 128) * 128,  # padded to a multiple of 128, like 32100 -> 32128
        d_model=T5_DIM, d_kv=8, num_heads=4, d_ff=80, num_layers=2, num_decoder_layers=2,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", layer_norm_epsilon=1e-6,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def _vae() -> AutoencoderKL:
    # 4 blocks = downscale 8, like the real VAE (block_out_channels 128/256/512/512, 32 groups).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4,
        act_fn="silu", sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
        force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def flux_transformer(seed: int, in_channels: int = 64, out_channels: int | None = None,
                      ) -> FluxTransformer2DModel:
    torch.manual_seed(seed)  # own seed, so dev and Kontext differ but each is reproducible alone
    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=out_channels,  # None: = in_channels
        num_layers=1, num_single_layers=1,
        attention_head_dim=HEAD_DIM, num_attention_heads=2,
        joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM,
        guidance_embeds=True, axes_dims_rope=AXES_DIMS_ROPE,
    )


def _siglip_vision() -> SiglipVisionModel:
    # so400m-patch14-384 geometry: (384 // 14)^2 = 27^2 = 729 image tokens.
    return SiglipVisionModel(SiglipVisionConfig(
        hidden_size=SIGLIP_DIM, intermediate_size=4 * SIGLIP_DIM, num_hidden_layers=2,
        num_attention_heads=2, image_size=384, patch_size=14, num_channels=3,
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    ))


def _nsfw_classifier() -> ViTForImageClassification:
    # Real: hidden 768, 12 layers, 12 heads (86M); the other values are ViTConfig's defaults, as
    # there. The initialiser's small weights keep every score below 0.75: the demo never flags.
    return ViTForImageClassification(ViTConfig(
        hidden_size=VIT_DIM, intermediate_size=4 * VIT_DIM, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=16, problem_type="single_label_classification",
        id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1},
    ))


def save_model(model, folder: Path, shards: int = 1) -> None:
    """save_pretrained in bfloat16 (as on the hub), then split into `shards` hub-style files."""
    model.to(torch.bfloat16).save_pretrained(folder)
    if shards == 1:
        return
    (single,) = folder.glob("*.safetensors")
    stem = single.name.removesuffix(".safetensors")  # "model" or "diffusion_pytorch_model"
    tensors = load_file(single)
    names = sorted(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    weight_map, groups, size = {}, [[] for _ in range(shards)], 0
    for name in names:  # contiguous runs of about total/shards bytes, by each tensor's midpoint
        nbytes = tensors[name].numel() * tensors[name].element_size()
        groups[min(shards - 1, (size + nbytes // 2) * shards // total)].append(name)
        size += nbytes
    assert all(groups), f"cannot split {folder} into {shards} shards"
    for i, group in enumerate(groups, 1):
        filename = f"{stem}-{i:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, folder / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, filename))
    single.unlink()
    write_json(folder / f"{stem}.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})
