"""The tiny FLUX.1 family: hub layouts, determinism, and that diffusers' real pipelines (and
transformers' NSFW classifier) run on it."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from diffusers import FluxKontextPipeline, FluxPipeline, FluxPriorReduxPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from pipelines.demo_family.family import FAMILY_VERSION, build_tiny_family, default_root

FLUX_FILES = """
model_index.json
scheduler/scheduler_config.json
text_encoder/config.json
text_encoder/model.safetensors
text_encoder_2/config.json
text_encoder_2/model-00001-of-00002.safetensors
text_encoder_2/model-00002-of-00002.safetensors
text_encoder_2/model.safetensors.index.json
tokenizer/merges.txt
tokenizer/special_tokens_map.json
tokenizer/tokenizer_config.json
tokenizer/vocab.json
tokenizer_2/special_tokens_map.json
tokenizer_2/spiece.model
tokenizer_2/tokenizer.json
tokenizer_2/tokenizer_config.json
transformer/config.json
transformer/diffusion_pytorch_model-00001-of-00003.safetensors
transformer/diffusion_pytorch_model-00002-of-00003.safetensors
transformer/diffusion_pytorch_model-00003-of-00003.safetensors
transformer/diffusion_pytorch_model.safetensors.index.json
vae/config.json
vae/diffusion_pytorch_model.safetensors
""".split()

REDUX_FILES = """
model_index.json
feature_extractor/preprocessor_config.json
image_embedder/config.json
image_embedder/diffusion_pytorch_model.safetensors
image_encoder/config.json
image_encoder/model.safetensors
""".split()

SAFETY_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]

T5_DIM = 32  # joint_attention_dim of the tiny transformer = T5 d_model


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="module")
def dev_pipe(family) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(family["dev"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_hub_layout(family):
    assert set(family) == {"dev", "kontext", "redux", "safety",  # and the adapters: test_tiny_adapters
                           "fill", "canny_lora", "depth_lora", "depth", "loras"}
    assert family["dev"].name == "FLUX.1-dev"
    assert family["kontext"].name == "FLUX.1-Kontext-dev"
    assert family["redux"].name == "FLUX.1-Redux-dev"
    assert family["safety"].name == "nsfw_image_detection"  # Falconsai/nsfw_image_detection
    assert {path.parent for path in family.values()} == {family["dev"].parent}
    assert _files(family["dev"]) == set(FLUX_FILES)
    assert _files(family["kontext"]) == set(FLUX_FILES)
    assert _files(family["redux"]) == set(REDUX_FILES)
    assert _files(family["safety"]) == set(SAFETY_FILES)
    assert (family["dev"].parent / f".complete-{FAMILY_VERSION}").exists()
    assert not list(family["dev"].parent.glob(".building-*"))


def test_kontext_shares_everything_but_the_transformer(family):
    dev, kontext = _hashes(family["dev"]), _hashes(family["kontext"])
    for name in FLUX_FILES:
        if name.startswith("transformer/") and name.endswith(".safetensors"):
            assert dev[name] != kontext[name], name
        elif name != "model_index.json":
            assert dev[name] == kontext[name], name


def test_build_is_deterministic_and_skipped_when_complete(family, tmp_path):
    again = build_tiny_family(tmp_path)
    assert _hashes(tmp_path) == _hashes(family["dev"].parent)

    # Complete: a second call touches nothing.
    stamp = (again["dev"] / "model_index.json").stat().st_mtime_ns
    build_tiny_family(tmp_path)
    assert (again["dev"] / "model_index.json").stat().st_mtime_ns == stamp


def test_an_older_version_is_rebuilt(tmp_path):
    paths = build_tiny_family(tmp_path)
    (tmp_path / f".complete-{FAMILY_VERSION}").rename(tmp_path / ".complete-2")
    shutil.rmtree(paths["safety"])  # version 1 had no classifier,
    shutil.rmtree(paths["loras"])  # version 2 no adapters
    build_tiny_family(tmp_path)
    assert _files(paths["safety"]) == set(SAFETY_FILES)
    assert (paths["loras"] / "tiny-kohya-style.safetensors").is_file()
    assert [p.name for p in tmp_path.glob(".complete-*")] == [f".complete-{FAMILY_VERSION}"]


def test_interrupted_build_is_redone(tmp_path):
    build_tiny_family(tmp_path)
    (tmp_path / f".complete-{FAMILY_VERSION}").unlink()  # as if killed before the marker
    (tmp_path / "FLUX.1-dev" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    paths = build_tiny_family(tmp_path)
    assert _files(paths["dev"]) == set(FLUX_FILES)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUX_PLAYGROUND_DEMO_MODELS", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("FLUX_PLAYGROUND_DEMO_MODELS")
    assert default_root() == REPO / "demo-models"


def test_geometry(dev_pipe):
    pipe = dev_pipe
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.config.in_channels == 64
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder_2.config.d_model == T5_DIM
    assert pipe.transformer.config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.use_dynamic_shifting and pipe.scheduler.config.max_shift == 1.15
    assert next(pipe.transformer.parameters()).dtype == torch.float32  # stored bf16, loaded as asked

    with torch.no_grad():
        latent = pipe.vae.encode(torch.zeros(1, 3, 1024, 1024)).latent_dist.mode()
    assert latent.shape == (1, 16, 128, 128)

    prompt_embeds, pooled, text_ids = pipe.encode_prompt("a photo of a cat", prompt_2=None)
    assert prompt_embeds.shape == (1, 512, T5_DIM)
    assert pooled.shape == (1, pipe.text_encoder.config.hidden_size)
    assert pipe.tokenizer.model_max_length == 77 == pipe.tokenizer_max_length
    assert pipe.tokenizer_2.model_max_length == 512
    clip_ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(clip_ids) == 77


def test_tokenizers_split_words(dev_pipe):
    clip, t5 = dev_pipe.tokenizer, dev_pipe.tokenizer_2
    clip_tokens = clip.convert_ids_to_tokens(clip("A photo of a Cat!").input_ids)
    assert clip_tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "!</w>",
                           "<|endoftext|>"]
    t5_tokens = t5.convert_ids_to_tokens(t5("A photo of a Cat!").input_ids)
    assert t5_tokens == ["▁A", "▁photo", "▁of", "▁a", "▁Cat", "!", "</s>"]
    assert t5.pad_token_id == 0 and t5.eos_token_id == 1 and t5.unk_token_id == 2
    assert t5.convert_tokens_to_ids("<extra_id_0>") == len(t5) - 1  # sentinels at the end, reversed
    assert "zebra" in clip.decode(clip("a zebra").input_ids, skip_special_tokens=True)


def test_flux_generates_a_varied_image(dev_pipe):
    def run(prompt):
        return dev_pipe(prompt, height=256, width=256, num_inference_steps=2, guidance_scale=3.5,
                        generator=torch.Generator().manual_seed(0)).images[0]

    image = run("a photo of a cat")
    assert image.size == (256, 256)
    pixels = np.asarray(image, dtype=np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 5
    other = np.asarray(run("a red car in the city"), dtype=np.float32)
    assert np.abs(pixels - other).mean() > 0.5  # the prompt reaches the image


def test_kontext_auto_resizes_to_a_preferred_resolution(family):
    pipe = FluxKontextPipeline.from_pretrained(family["kontext"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    resize = pipe.image_processor.resize
    pipe.image_processor.resize = lambda image, height, width, **kw: (
        seen.append((width, height)) or resize(image, height, width, **kw))
    out = pipe(image=Image.new("RGB", (300, 200), (200, 120, 40)), prompt="make it blue",
               height=256, width=256, max_area=256 * 256,  # Kontext rescales the output to max_area
               num_inference_steps=1,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (256, 256)
    assert set(seen) == {(1248, 832)}  # the preferred size closest to 3:2
    assert seen[0] in PREFERRED_KONTEXT_RESOLUTIONS


def test_redux_prior_with_dev_text_encoders(family, dev_pipe):
    redux = FluxPriorReduxPipeline.from_pretrained(
        family["redux"], text_encoder=dev_pipe.text_encoder, tokenizer=dev_pipe.tokenizer,
        text_encoder_2=dev_pipe.text_encoder_2, tokenizer_2=dev_pipe.tokenizer_2, dtype=torch.float32)
    image = Image.new("RGB", (500, 300), (30, 160, 90))
    assert redux.encode_image(image, "cpu", 1).shape == (1, 729, 32)  # (384 / 14)^2 SigLIP tokens
    out = redux(image, prompt="")
    assert out.prompt_embeds.shape == (1, 512 + 729, T5_DIM)
    assert out.pooled_prompt_embeds.shape == (1, dev_pipe.text_encoder.config.hidden_size)
    assert torch.isfinite(out.prompt_embeds).all()


def test_nsfw_classifier_loads_as_on_the_hub(family):
    model = AutoModelForImageClassification.from_pretrained(family["safety"])
    processor = AutoImageProcessor.from_pretrained(family["safety"])
    assert type(model).__name__ == "ViTForImageClassification"
    assert model.config.architectures == ["ViTForImageClassification"]
    assert model.config.id2label == {0: "normal", 1: "nsfw"}
    assert model.config.label2id == {"normal": 0, "nsfw": 1}
    assert (model.config.image_size, model.config.patch_size) == (224, 16)
    assert next(model.parameters()).dtype == torch.float32  # stored float32, as the real one
    assert type(processor).__name__.startswith("ViTImageProcessor")  # whichever backend is installed
    assert processor.size == {"height": 224, "width": 224} and processor.resample == 2
    assert list(processor.image_mean) == list(processor.image_std) == [0.5, 0.5, 0.5]

    inputs = processor(images=[Image.new("RGB", (500, 300), (30, 160, 90))] * 2, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 224, 224)
    assert inputs["pixel_values"].min() >= -1 and inputs["pixel_values"].max() <= 1
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
