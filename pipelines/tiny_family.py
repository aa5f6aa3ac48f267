"""A tiny, random-weight FLUX.1 model family, built offline and deterministically.

The folders mirror the Hugging Face hub layouts of black-forest-labs/FLUX.1-dev,
FLUX.1-Kontext-dev and FLUX.1-Redux-dev file for file, so the project's real
loading code (``from_pretrained`` on the folder or its subfolders) runs on them
unchanged: in tests and as the offline demo model.

Only widths and depths are shrunk. Everything that decides sizes and token
counts is the real one: VAE downscale 8 with 16 latent channels (1024x1024 ->
128x128x16), 2x2 patches (in_channels 64), 77 CLIP tokens, 512 T5 tokens,
SigLIP 384px / patch 14 (729 image tokens), the real scheduler config.

    python -m pipelines.tiny_family [ROOT]
"""

from __future__ import annotations

import fcntl
import io
import json
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
)

# Bump whenever the output changes: the marker name makes old builds get rebuilt.
FAMILY_VERSION = "1"

REPOS = {"dev": "FLUX.1-dev", "kontext": "FLUX.1-Kontext-dev", "redux": "FLUX.1-Redux-dev"}

# Tiny widths. Heads/dims chosen so every divisibility rule of the real models holds.
CLIP_DIM, T5_DIM, SIGLIP_DIM = 32, 32, 32
HEAD_DIM, AXES_DIMS_ROPE = 16, [4, 6, 6]  # rope axes must sum to the head dim (real: 128 = 16+56+56)
T5_EXTRA_IDS = 100

# A few hundred common (prompt) words: each becomes one whole-word token in both tokenizers.
WORDS = """
a an the and or but of in on at to from with without by for as is are was be it its this that
these those there here i you he she we they my your his her our their what which who where when
how why not no yes all some any many more most few one two three four five six seven eight nine
ten very so too up down out over under into through between behind above below near far left
right top bottom front back inside outside new old big small large tiny long short tall wide
high low little huge good bad best beautiful pretty cute ugly happy sad angry calm quiet loud
bright dark light black white red green blue yellow orange purple pink brown gray grey gold
golden silver colorful man woman boy girl child children people person face eyes eye hair hand
hands head body smile portrait cat cats dog dogs bird birds horse fish animal animals tree trees
flower flowers grass forest mountain mountains river lake sea ocean beach sand sky cloud clouds
sun moon star stars rain snow fire water ice wind storm city street road house houses building
buildings castle tower bridge car cars train boat ship plane window door wall floor room table
chair bed book food cake coffee tea apple fruit garden park field farm village night day morning
evening sunset sunrise winter summer spring autumn photo photograph picture image painting
drawing sketch illustration art style render detailed realistic cinematic lighting shot close
view background foreground scene landscape texture pattern wearing holding sitting standing
walking running flying looking made make change turn add remove replace keep same different
color colors shape simple soft sharp focus blur vintage modern futuristic fantasy magic robot
space planet world earth glass metal wood stone paper cloth dress shirt hat glasses
""".split()


def default_root() -> Path:
    """Where the demo family lives: $FLUX_PLAYGROUND_DEMO_MODELS, else <repo>/demo-models."""
    env = os.environ.get("FLUX_PLAYGROUND_DEMO_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "demo-models"


def build_tiny_family(root: Path | None = None) -> dict[str, Path]:
    """Build the three folders under ``root`` (once) and return {"dev", "kontext", "redux"} paths."""
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
    _write_json(dev / "model_index.json", _flux_index("FluxPipeline"))
    _write_json(dev / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    _write_clip_tokenizer(dev / "tokenizer")
    _write_t5_tokenizer(dev / "tokenizer_2")
    torch.manual_seed(0)
    _save(_clip_text_model(), dev / "text_encoder")
    _save(_t5_encoder(), dev / "text_encoder_2", shards=2)  # the hub's T5 comes in 2 shards
    _save(_vae(), dev / "vae")
    _save(_flux_transformer(seed=1), dev / "transformer", shards=3)

    # Kontext: its own transformer, everything else is byte-identical to dev (as on the hub).
    shutil.copytree(dev, kontext)
    index = _flux_index("FluxKontextPipeline")
    index.update(feature_extractor=[None, None], image_encoder=[None, None])  # optional IP-Adapter slots
    _write_json(kontext / "model_index.json", index)
    shutil.rmtree(kontext / "transformer")
    _save(_flux_transformer(seed=2), kontext / "transformer", shards=3)

    _write_json(redux / "model_index.json", {
        "_class_name": "FluxPriorReduxPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": ["transformers", "SiglipImageProcessor"],
        # "flux" = the diffusers.pipelines.flux module, where ReduxImageEncoder lives.
        "image_embedder": ["flux", "ReduxImageEncoder"],
        "image_encoder": ["transformers", "SiglipVisionModel"],
    })
    _write_json(redux / "feature_extractor" / "preprocessor_config.json", SIGLIP_PREPROCESSOR)
    torch.manual_seed(3)
    _save(_siglip_vision(), redux / "image_encoder")
    _save(ReduxImageEncoder(redux_dim=SIGLIP_DIM, txt_in_features=T5_DIM), redux / "image_embedder")


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
        vocab_size=len(_clip_vocab_and_merges()[0]),
        hidden_size=CLIP_DIM, intermediate_size=4 * CLIP_DIM, projection_dim=CLIP_DIM,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
        # The real config's ids: eos_token_id 2 selects the legacy pooling (argmax of the ids),
        # which is right because <|endoftext|> is the highest id, as in the real vocab.
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))


def _t5_encoder() -> T5EncoderModel:
    n_tokens = 3 + len(_t5_pieces()) + T5_EXTRA_IDS
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


def _flux_transformer(seed: int) -> FluxTransformer2DModel:
    torch.manual_seed(seed)  # own seed, so dev and Kontext differ but each is reproducible alone
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
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
    _write_json(folder / f"{stem}.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})


# --- tokenizers ---------------------------------------------------------------------------

def _t5_pieces() -> list[tuple[str, float]]:
    """SentencePiece unigram pieces: whole words (lower and Capitalised), then single characters."""
    words = [w for word in dict.fromkeys(WORDS) for w in dict.fromkeys([word, word.capitalize()])]
    pieces = [("▁", -2.0)]  # the real spiece.model also has "▁" at id 3
    pieces += [("▁" + w, -4.0 - i / 1000) for i, w in enumerate(words)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()/&%+*=#@_"
    pieces += [(c, -10.0 - i / 1000) for i, c in enumerate(chars)]
    return pieces


def _write_t5_tokenizer(folder: Path) -> None:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    proto = sp_pb2.ModelProto()
    for piece, score, kind in [("<pad>", 0.0, "CONTROL"), ("</s>", 0.0, "CONTROL"), ("<unk>", 0.0, "UNKNOWN")]:
        proto.pieces.add(piece=piece, score=score, type=getattr(sp_pb2.ModelProto.SentencePiece, kind))
    for piece, score in _t5_pieces():
        proto.pieces.add(piece=piece, score=score)
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size = sp_pb2.TrainerSpec.UNIGRAM, len(proto.pieces)
    spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = 0, 1, 2, -1
    # T5 normalises with nmt_nfkc; sentencepiece only hands out that (constant) table from a
    # trainer run, so train a throwaway model in memory and keep its normalizer spec.
    scratch = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 4), model_writer=scratch, vocab_size=40,
        normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2)
    proto.normalizer_spec.CopyFrom(sp_pb2.ModelProto.FromString(scratch.getvalue()).normalizer_spec)
    (folder / "spiece.model").write_bytes(proto.SerializeToString())

    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    config = {
        "add_prefix_space": True, "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": True, "eos_token": "</s>", "extra_ids": T5_EXTRA_IDS,
        "legacy": True, "model_max_length": 512, "pad_token": "<pad>", "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer", "unk_token": "<unk>",
    }
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": extra, "eos_token": _special("</s>"),
        "pad_token": _special("<pad>"), "unk_token": _special("<unk>")})
    # tokenizer.json is the converted spiece.model (what the fast tokenizer actually loads).
    tokenizer = T5TokenizerFast.from_pretrained(folder)
    (folder / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(pretty=True) + "\n")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (byte-level BPE alphabet)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return dict(zip(keep + extra, [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one lower-case word: repeatedly apply the best-ranked merge."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pair = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, len(ranks) + 1))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def _clip_vocab_and_merges() -> tuple[list[str], list[tuple[str, str]]]:
    """Real CLIP vocab order: 256 byte chars, the same with </w>, merge results, then specials.

    Merges are added (at lowest priority) until BPE turns every word into one token; merges only
    ever join the pieces BPE currently yields, so earlier words stay whole."""
    chars = list(_bytes_to_unicode().values())
    vocab, merges, ranks = chars + [c + "</w>" for c in chars], [], {}
    for word in dict.fromkeys(WORDS):
        while len(parts := _bpe(word, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
            if parts[0] + parts[1] not in vocab:
                vocab.append(parts[0] + parts[1])
    return vocab + ["<|startoftext|>", "<|endoftext|>"], merges


def _write_clip_tokenizer(folder: Path) -> None:
    vocab, merges = _clip_vocab_and_merges()
    _write_json(folder / "vocab.json", {token: i for i, token in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    bos, eos = _special("<|startoftext|>", True), _special("<|endoftext|>", True)
    _write_json(folder / "special_tokens_map.json",
                {"bos_token": bos, "eos_token": eos, "pad_token": "<|endoftext|>", "unk_token": eos})
    _write_json(folder / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(len(vocab) - 2): {**bos, "special": True},
                                 str(len(vocab) - 1): {**eos, "special": True}},
        "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True, "do_lower_case": True,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
        "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
    })


def _special(content: str, normalized: bool = False) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else default_root()
    paths = build_tiny_family(root)
    for key, path in paths.items():
        print(f"{key:8s} {path}")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"total    {total / 2**20:.2f} MiB in {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
