"""A tiny, random-weight FLUX.1 model family, built offline and deterministically.

The folders mirror the Hugging Face hub layouts of black-forest-labs/FLUX.1-dev,
FLUX.1-Kontext-dev and FLUX.1-Redux-dev file for file, and that of the NSFW
classifier BFL's reference code screens outputs with (Falconsai/nsfw_image_detection),
plus (built by tiny_adapters) FLUX.1-Fill-dev, the Canny/Depth control LoRAs, Depth
Anything V2 Small and style LoRAs, so the project's real loading code
(``from_pretrained`` on the folder or its subfolders) runs on them unchanged: in
tests and as the offline demo model.

Only widths and depths are shrunk. Everything that decides sizes and token
counts is the real one: VAE downscale 8 with 16 latent channels (1024x1024 ->
128x128x16), 2x2 patches (in_channels 64), 77 CLIP tokens, 512 T5 tokens,
SigLIP 384px / patch 14 (729 image tokens), the real scheduler config, ViT 224px /
patch 16 with the labels normal/nsfw.

    python -m pipelines.tiny_family [ROOT]
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
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

from pipelines.tiny_tokenizers import (
    clip_vocab_size,
    t5_token_count,
    write_clip_tokenizer,
    write_json,
    write_t5_tokenizer,
)

# Bump whenever the output changes: the marker name makes old builds get rebuilt.
FAMILY_VERSION = "3"

REPOS = {"dev": "FLUX.1-dev", "kontext": "FLUX.1-Kontext-dev", "redux": "FLUX.1-Redux-dev",
         "safety": "nsfw_image_detection",
         # Built by tiny_adapters: the weights of the inpaint/outpaint, control and LoRA modes.
         "fill": "FLUX.1-Fill-dev", "canny_lora": "FLUX.1-Canny-dev-lora",
         "depth_lora": "FLUX.1-Depth-dev-lora", "depth": "Depth-Anything-V2-Small-hf", "loras": "loras"}

# Tiny widths. Heads/dims chosen so every divisibility rule of the real models holds.
CLIP_DIM, T5_DIM, SIGLIP_DIM, VIT_DIM = 32, 32, 32, 32
HEAD_DIM, AXES_DIMS_ROPE = 16, [4, 6, 6]  # rope axes must sum to the head dim (real: 128 = 16+56+56)

def default_root() -> Path:
    """Where the demo family lives: $FLUX_PLAYGROUND_DEMO_MODELS, else <repo>/demo-models."""
    env = os.environ.get("FLUX_PLAYGROUND_DEMO_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "demo-models"


def build_tiny_family(root: Path | None = None) -> dict[str, Path]:
    """Build the folders of REPOS under ``root`` (once); return {key: path} for each."""
    root = Path(root) if root is not None else default_root()
    paths = {key: root / name for key, name in REPOS.items()}
    marker = root / f".complete-{FAMILY_VERSION}"

    def complete() -> bool:
        return marker.exists() and all(path.is_dir() for path in paths.values())

    if complete():
        return paths
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time; the others wait here and then find the marker.
    with _locked(root / ".build.lock"):
        if complete():
            return paths
        for stale in root.glob(".complete-*"):  # an older version's marker
            stale.unlink()
        for stale in root.glob(".building-*"):  # left behind by a killed build
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            with _quiet_libraries(), torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
                _build_into(tmp)
            for file in tmp.rglob("*"):  # safetensors writes 0600 files; the hub's are plain 0644
                file.chmod(0o755 if file.is_dir() else 0o644)
            for name in REPOS.values():
                if (root / name).exists():
                    shutil.rmtree(root / name)
                os.replace(tmp / name, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        marker.write_text(FAMILY_VERSION + "\n")  # last: an interrupted build has no marker
    return paths


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _quiet_libraries():
    """No progress bars or "cast with .to()" notices while saving freshly built models."""
    import diffusers.utils.logging as d_log
    import transformers.utils.logging as t_log

    levels, bars = (d_log.get_verbosity(), t_log.get_verbosity()), t_log.is_progress_bar_enabled()
    d_log.set_verbosity_error()
    t_log.set_verbosity_error()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        d_log.set_verbosity(levels[0])
        t_log.set_verbosity(levels[1])
        if bars:
            t_log.enable_progress_bar()


def _build_into(tmp: Path) -> None:
    dev, kontext, redux = (tmp / REPOS[key] for key in ("dev", "kontext", "redux"))
    # Fixed seeds per component; configs saved by the libraries carry their versions, as on the hub.
    write_json(dev / "model_index.json", _flux_index("FluxPipeline"))
    write_json(dev / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_clip_tokenizer(dev / "tokenizer")
    write_t5_tokenizer(dev / "tokenizer_2")
    torch.manual_seed(0)
    _save(_clip_text_model(), dev / "text_encoder")
    _save(_t5_encoder(), dev / "text_encoder_2", shards=2)  # the hub's T5 comes in 2 shards
    _save(_vae(), dev / "vae")
    _save(_flux_transformer(seed=1), dev / "transformer", shards=3)

    # Kontext: its own transformer, everything else is byte-identical to dev (as on the hub).
    shutil.copytree(dev, kontext)
    index = _flux_index("FluxKontextPipeline")
    index.update(feature_extractor=[None, None], image_encoder=[None, None])  # optional IP-Adapter slots
    write_json(kontext / "model_index.json", index)
    shutil.rmtree(kontext / "transformer")
    _save(_flux_transformer(seed=2), kontext / "transformer", shards=3)

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
    _save(_siglip_vision(), redux / "image_encoder")
    _save(ReduxImageEncoder(redux_dim=SIGLIP_DIM, txt_in_features=T5_DIM), redux / "image_embedder")

    # The NSFW classifier: one flat folder, weights in float32 as on the hub.
    safety = tmp / REPOS["safety"]
    write_json(safety / "preprocessor_config.json", VIT_PREPROCESSOR)
    torch.manual_seed(4)
    _nsfw_classifier().save_pretrained(safety)

    from pipelines.tiny_adapters import build_adapters  # here: it imports this module

    build_adapters(tmp)


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


def _flux_index(class_name: str) -> dict:
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


def _flux_transformer(seed: int, in_channels: int = 64, out_channels: int | None = None,
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


def _save(model, folder: Path, shards: int = 1) -> None:
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


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else default_root()
    paths = build_tiny_family(root)
    for key, path in paths.items():
        print(f"{key:10s} {path}")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"total      {total / 2**20:.2f} MiB in {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
