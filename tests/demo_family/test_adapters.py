"""The tiny family's adapter weights (pipelines/tiny_adapters.py): hub layouts, the LoRA key formats,
and that diffusers' Fill and control pipelines, its LoRA loading and transformers' depth estimator
run on them as on the real ones."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FluxControlPipeline,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from pipelines.demo_family.adapters import TRAINING_TARGETS

RUN = {"height": 128, "width": 128, "num_inference_steps": 2}  # 8x8 packed tokens: quick, real geometry
STYLE, KOHYA = "tiny-style-lora", "tiny-kohya-style.safetensors"
BIRD, LAKE = "presets/examples/bluebird.jpg", "presets/examples/lake_sunset.jpg"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.fixture(scope="module")
def dev_pipe(family) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(family["dev"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def t2i(pipe) -> np.ndarray:
    return _pixels(pipe("a photo of a cat", **RUN, generator=torch.Generator().manual_seed(0)).images[0])


@pytest.fixture(scope="module")
def linears(family) -> dict[str, tuple[int, int]]:
    """(out, in) of each nn.Linear of the tiny dev transformer."""
    model = FluxTransformer2DModel.from_pretrained(family["dev"], subfolder="transformer")
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# --- layouts ----------------------------------------------------------------------------------

def test_adapter_layouts(family):
    root = family["dev"].parent
    assert {key: path.relative_to(root).as_posix() for key, path in family.items()
            if key in ("fill", "canny_lora", "depth_lora", "depth", "loras")} == {
        "fill": "FLUX.1-Fill-dev", "canny_lora": "FLUX.1-Canny-dev-lora", "depth_lora": "FLUX.1-Depth-dev-lora",
        "depth": "Depth-Anything-V2-Small-hf", "loras": "loras"}
    assert _files(family["fill"]) == _files(family["dev"])
    assert _files(family["canny_lora"]) == {"flux1-canny-dev-lora.safetensors"}
    assert _files(family["depth_lora"]) == {"flux1-depth-dev-lora.safetensors"}
    assert _files(family["depth"]) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert _files(family["loras"]) == {f"{STYLE}/pytorch_lora_weights.safetensors", f"{STYLE}/README.md", KOHYA}
    assert (_sha(family["canny_lora"] / "flux1-canny-dev-lora.safetensors")
            != _sha(family["depth_lora"] / "flux1-depth-dev-lora.safetensors"))


def test_fill_is_dev_with_its_own_384_channel_transformer(family):
    for name in _files(family["dev"]):
        same = _sha(family["dev"] / name) == _sha(family["fill"] / name)
        own = name == "model_index.json" or name.startswith("transformer/")
        assert same != own, name
    assert json.loads((family["fill"] / "model_index.json").read_text())["_class_name"] == "FluxFillPipeline"
    config = json.loads((family["fill"] / "transformer" / "config.json").read_text())
    assert (config["in_channels"], config["out_channels"]) == (384, 64)  # as the real Fill's


def test_control_lora_keys_are_diffusers_conversion_of_bfls(family, linears):
    tensors, metadata = _read(family["canny_lora"] / "flux1-canny-dev-lora.safetensors")
    assert metadata == {"format": "pt"}
    norms = {*(f"transformer.transformer_blocks.0.attn.{n}.weight"
               for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")),
             *(f"transformer.single_transformer_blocks.0.attn.{n}.weight" for n in ("norm_q", "norm_k"))}
    lora = {f"transformer.{name}.{part}" for name in linears
            for part in ("lora_A.weight", "lora_B.weight", "lora_B.bias")}
    assert set(tensors) == lora | norms  # every linear of the transformer, and the q/k norm scales
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    for name, (out_features, in_features) in linears.items():
        if name == "x_embedder":
            in_features = 128  # 64 latent + 64 control channels
        assert tensors[f"transformer.{name}.lora_A.weight"].shape == (4, in_features), name
        assert tensors[f"transformer.{name}.lora_B.weight"].shape == (out_features, 4), name
        assert tensors[f"transformer.{name}.lora_B.bias"].shape == (out_features,), name
    # BFL fuses q/k/v: one lora_A, copied to each by diffusers' converter.
    block = "transformer.transformer_blocks.0.attn"
    assert torch.equal(tensors[f"{block}.to_q.lora_A.weight"], tensors[f"{block}.to_v.lora_A.weight"])
    # lora_state_dict hands them over as they are, norm scales included.
    state_dict = FluxControlPipeline.lora_state_dict(family["canny_lora"])
    assert set(state_dict) == set(tensors)


def test_style_lora_formats(family, linears):
    tensors, metadata = _read(family["loras"] / STYLE / "pytorch_lora_weights.safetensors")
    modules = {name for name in linears if any(name == t or name.endswith("." + t) for t in TRAINING_TARGETS)}
    assert len(modules) == 15  # 12 in the double block, q/k/v in the single one
    assert set(tensors) == {f"transformer.{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
    config = json.loads(metadata["lora_adapter_metadata"])  # the LoraConfig, keys prefixed by component
    assert config["transformer.r"] == config["transformer.lora_alpha"] == 4
    assert config["transformer.target_modules"] == sorted(TRAINING_TARGETS)
    assert "instance_prompt: in tiny style" in (family["loras"] / STYLE / "README.md").read_text()

    tensors, metadata = _read(family["loras"] / KOHYA)
    assert metadata["ss_network_module"] == "networks.lora_flux"
    layers = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert layers == {
        *(f"lora_unet_double_blocks_0_{s}_{layer}" for s in ("img", "txt")
          for layer in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")),
        "lora_unet_single_blocks_0_linear2", "lora_unet_single_blocks_0_modulation_lin",
        *(f"lora_te1_text_model_encoder_layers_{i}_{layer}" for i in range(2)
          for layer in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                        "mlp_fc1", "mlp_fc2")),
    }
    assert set(tensors) == {f"{layer}.{part}" for layer in layers
                            for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (3 * 32, 4)  # fused
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (4, 32)
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].shape == ()
    assert float(tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 2.0


# --- behaviour in diffusers / transformers ----------------------------------------------------

def test_fill_runs_with_devs_components(family, dev_pipe):
    transformer = FluxTransformer2DModel.from_pretrained(family["fill"], subfolder="transformer")
    fill = FluxFillPipeline.from_pipe(dev_pipe, transformer=transformer)
    fill.set_progress_bar_config(disable=True)
    image = Image.open(BIRD).convert("RGB").resize((128, 128))

    def inpaint(box) -> np.ndarray:
        mask = Image.new("L", (128, 128), 0)
        mask.paste(255, box)
        return _pixels(fill("a cat", image=image, mask_image=mask, **RUN,
                            generator=torch.Generator().manual_seed(0)).images[0])

    left, right = inpaint((0, 0, 64, 128)), inpaint((64, 0, 128, 128))
    assert left.shape == (128, 128, 3) and np.isfinite(left).all()
    assert np.abs(left - right).mean() > 1  # the mask reaches the transformer
    assert type(FluxFillPipeline.from_pretrained(family["fill"]).transformer) is FluxTransformer2DModel


@pytest.mark.parametrize("lora", ["canny_lora", "depth_lora"])
def test_control_lora_widens_x_embedder_and_unloads_bit_exactly(family, dev_pipe, lora):
    transformer = dev_pipe.transformer
    before, weights = t2i(dev_pipe), {k: v.clone() for k, v in transformer.state_dict().items()}
    control = FluxControlPipeline.from_pipe(dev_pipe)  # shares the transformer
    control.set_progress_bar_config(disable=True)
    control.load_lora_weights(family[lora], adapter_name="canny")
    try:
        assert transformer.config.in_channels == 128
        assert transformer.x_embedder.base_layer.weight.shape == (32, 128)  # 64 zero columns added
        assert not torch.equal(transformer.transformer_blocks[0].attn.norm_q.weight,
                               weights["transformer_blocks.0.attn.norm_q.weight"])  # loaded in place

        def run(control_image: Image.Image) -> np.ndarray:
            return _pixels(control("a photo of a cat", control_image=control_image, **RUN,
                                   generator=torch.Generator().manual_seed(0)).images[0])

        edges = np.zeros((128, 128, 3), np.uint8)
        edges[::16], edges[:, ::16] = 255, 255
        blank = run(Image.new("RGB", (128, 128)))
        assert np.abs(run(Image.fromarray(edges)) - blank).mean() > 2  # the control image shows
    finally:
        control.unload_lora_weights(reset_to_overwritten_params=True)
    assert transformer.config.in_channels == 64
    assert type(transformer.x_embedder) is torch.nn.Linear and transformer.x_embedder.in_features == 64
    after = transformer.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)
    assert np.array_equal(t2i(dev_pipe), before)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # PEFT, on a second adapter
def test_style_loras_load_weigh_and_unload(family, dev_pipe):
    base = t2i(dev_pipe)
    loras = family["loras"]
    dev_pipe.load_lora_weights(loras / STYLE, adapter_name="style")  # a hub-style folder
    dev_pipe.load_lora_weights(loras / KOHYA, adapter_name="kohya")  # a single file
    try:
        # The kohya file has CLIP-L layers too; the last LoRA loaded is the active one.
        assert dev_pipe.get_list_adapters() == {"transformer": ["style", "kohya"], "text_encoder": ["kohya"]}
        assert dev_pipe.get_active_adapters() == ["kohya"]
        dev_pipe.set_adapters(["style"], adapter_weights=[1.0])
        style = t2i(dev_pipe)
        dev_pipe.set_adapters(["kohya"], adapter_weights=[1.0])
        kohya = t2i(dev_pipe)
        assert np.abs(style - base).mean() > 3 and np.abs(kohya - base).mean() > 3
        assert np.abs(style - kohya).mean() > 3
        dev_pipe.set_adapters(["style"], adapter_weights=[0.5])
        half = t2i(dev_pipe)
        assert 0 < np.abs(half - base).mean() < np.abs(style - base).mean()
        dev_pipe.set_adapters(["style", "kohya"], adapter_weights=[0.0, 0.0])
        assert np.array_equal(t2i(dev_pipe), base)
        dev_pipe.set_adapters(["style", "kohya"], adapter_weights=[1.0, 1.0])
        assert np.abs(t2i(dev_pipe) - style).mean() > 1

        dev_pipe.delete_adapters("kohya")
        assert dev_pipe.get_list_adapters() == {"transformer": ["style"]}
        dev_pipe.set_adapters(["style"], adapter_weights=[1.0])
        assert np.array_equal(t2i(dev_pipe), style)
        dev_pipe.delete_adapters("style")
        assert np.array_equal(t2i(dev_pipe), base)

        # A file inside a folder: by weight_name (a folder alone would pick the first .safetensors).
        dev_pipe.load_lora_weights(loras, weight_name=KOHYA, adapter_name="again")
        assert np.array_equal(t2i(dev_pipe), kohya)
    finally:
        dev_pipe.unload_lora_weights()
    assert dev_pipe.get_list_adapters() == {}
    assert np.array_equal(t2i(dev_pipe), base)


def test_depth_estimator_loads_as_on_the_hub(family):
    model = AutoModelForDepthEstimation.from_pretrained(family["depth"])
    processor = AutoImageProcessor.from_pretrained(family["depth"])
    assert type(model).__name__ == "DepthAnythingForDepthEstimation"
    assert model.config.architectures == ["DepthAnythingForDepthEstimation"]
    assert model.config.depth_estimation_type == "relative"
    assert (model.config.backbone_config.image_size, model.config.backbone_config.patch_size) == (518, 14)
    assert next(model.parameters()).dtype == torch.float32  # stored float32, as the real one
    assert type(processor).__name__.startswith("DPTImageProcessor")  # whichever backend is installed
    assert (processor.size.height, processor.size.width) == (518, 518)
    assert processor.keep_aspect_ratio and processor.ensure_multiple_of == 14 and processor.resample == 3
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]

    def depth(image: Image.Image) -> torch.Tensor:
        with torch.no_grad():
            return model(**processor(images=image, return_tensors="pt")).predicted_depth

    lake = depth(Image.open(LAKE).convert("RGB"))  # 768x512: the short side to 518, sides multiples of 14
    assert lake.shape == (1, 518, 784)
    assert torch.isfinite(lake).all() and lake.min() > 0 and lake.std() > 0  # no pixel lost to the ReLU
    bird = depth(Image.open(BIRD).convert("RGB"))
    assert bird.shape == (1, 518, 518)
    assert (bird - depth(Image.new("RGB", (640, 640), (90, 140, 200)))).abs().mean() > 1e-3  # image-dependent
