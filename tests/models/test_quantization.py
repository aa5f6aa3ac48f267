"""Quantized storage and single-file transformers on the demo family, on CPU: BFL's single
`.safetensors` and GGUF Q8_0 / Q4_0 files load through `from_single_file`, torchao int8 through
`from_pretrained`, and each generates close to the unquantized model, with and without a LoRA.

Tolerances are mean absolute differences of pixels in [0, 1] from the float32 output at 128x128,
2 steps; measured on this machine: BFL's file holds the same tensors (1e-7); Q8_0 4.3e-4 and int8
4.4e-4 (bound 2e-3); Q4_0 7.4e-3 (bound 2e-2). The style LoRA changes the image by 0.024; its
change on a stored transformer differs from its change on float32 by 2e-4 (Q8_0, int8) and 3e-3
(Q4_0), under the same bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel

from pipelines.demo_family.single_files import (
    build_single_files,
    dev_transformer_state,
    to_bfl_layout,
)
from pipelines.errors import FieldError
from pipelines.models.quantization import plan_quantization, quantization_kwargs
from pipelines.models.single_file import to_diffusers_layout
from pipelines.models.sources import pick_placement
from pipelines.models.startup import demo_manager

SIZE, STEPS = 128, 2
TOLERANCE = {"bfl": 1e-6, "Q8_0": 2e-3, "int8": 2e-3, "Q4_0": 2e-2}
STORED_AS = {"bfl": "float32", "Q8_0": "gguf Q8_0", "Q4_0": "gguf Q4_0", "int8": "int8 (torchao)"}
CPU = pick_placement("cpu")


@pytest.fixture(scope="module")
def files(family, tmp_path_factory):
    return build_single_files(family, tmp_path_factory.mktemp("single-files"))


def manager_for(kind: str, files):
    """A demo manager whose dev transformer is `kind`: "float32" (the folder), a single file, or int8."""
    if kind == "int8":
        return demo_manager(CPU, quantization=plan_quantization("int8", CPU.device))
    return demo_manager(CPU, dev_file=str(files[kind]) if kind in files else None)


@torch.inference_mode()
def generate(manager, loras=()) -> np.ndarray:
    with manager.lock:
        (pipe,) = manager.enter("text_to_image", ("text_to_image",), None, loras)
        return pipe("a lighthouse at dusk", width=SIZE, height=SIZE, num_inference_steps=STEPS,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="np").images


def with_style_lora(manager, family) -> np.ndarray:
    manager.load_lora(str(family["loras"] / "tiny-style-lora"), "style")
    return generate(manager, (("style", 1.0),))


@pytest.fixture(scope="module")
def reference(family, files):
    """The unquantized demo dev transformer's image, without and with the style LoRA."""
    manager = manager_for("float32", files)
    return generate(manager), with_style_lora(manager, family)


def test_bfl_layout_round_trips_through_diffusers_converter(family):
    state = dev_transformer_state(family)
    config = FluxTransformer2DModel.load_config(family["dev"], subfolder="transformer")
    back = to_diffusers_layout(to_bfl_layout(state), config)
    assert set(back) == set(state)
    assert all(torch.equal(back[key], state[key]) for key in state)


@pytest.mark.parametrize("kind", ["bfl", "Q8_0", "Q4_0", "int8"])
def test_stored_transformer_generates_close_to_float32_with_and_without_a_lora(kind, family, files, reference):
    manager = manager_for(kind, files)
    image, lora_image = generate(manager), with_style_lora(manager, family)
    plain, plain_lora = reference
    difference = np.abs(image - plain).mean()
    assert difference <= TOLERANCE[kind], difference
    # The LoRA changes the image as it changes float32's: the same change, within the tolerance.
    change, plain_change = lora_image - image, plain_lora - plain
    assert np.abs(plain_change).mean() > 0.01
    assert np.abs(change - plain_change).mean() <= TOLERANCE[kind]
    assert np.abs(lora_image - plain_lora).mean() <= TOLERANCE[kind]
    status = manager.status()["components"]["transformer"]
    assert status["stored_as"] == STORED_AS[kind] and status["bytes"] > 0
    if kind in ("Q4_0", "int8"):  # quantized weights take fewer bytes than float32 ones
        assert status["bytes"] < manager_for("float32", files).status()["components"]["transformer"]["bytes"]


def test_int8_stores_t5_quantized_too(files):
    status = manager_for("int8", files).status()
    assert status["components"]["text_encoder_2"]["stored_as"] == "int8 (torchao)"
    assert {key: value for key, value in status["quantization"].items() if key != "control"} == {
        "requested": "int8", "fallback": None, "loras": "allowed",
        "storage": {name: "int8" for name in status["quantization"]["storage"]}}


@pytest.mark.parametrize("kind, why", [("fp8", "float8 matmuls need a CUDA GPU"), ("nf4", "needs a CUDA GPU")])
def test_cuda_only_types_fall_back_to_none_on_cpu_and_say_why(kind, why):
    plan = plan_quantization(kind, torch.device("cpu"))
    assert plan.storage == {} and f"--quantize {kind} falls back to none" in plan.fallback and why in plan.fallback
    assert quantization_kwargs("transformer", plan.storage_of("transformer")) == {}


def test_loras_on_a_float8_transformer_are_refused_by_name(files):
    from pipelines.models.quantization import QuantizationPlan

    manager = manager_for("float32", files)
    manager.quantization = QuantizationPlan("fp8", {"transformer": "fp8"})  # as on a GPU of capability >= 8.9
    assert "PEFT cannot attach LoRAs to torchao float8" in manager.status()["quantization"]["loras"]
    with pytest.raises(FieldError, match="stored as fp8"):
        manager.load_lora("unused", "style")
    with pytest.raises(FieldError, match="stored as fp8") as raised:
        generate(manager, (("style", 1.0),))
    assert raised.value.field == "loras"


def test_auto_stores_what_the_memory_plan_chose():
    from pipelines.models import memory_plan
    from pipelines.models.architectures import component_sizes
    from pipelines.models.sources import ModelSources

    # A 16 GB card with quantization allowed: T5 and the transformers in NF4 (README's table).
    sizes = component_sizes(ModelSources(fill=""))
    plan = memory_plan.choose_plan(memory_plan.simulated_free_bytes(16), sizes, 3 * 2**30, quantize_allowed=True,
                                   fp8_available=True)
    chosen = plan_quantization("auto", torch.device("cuda"), {c.name: c.storage for c in plan.components})
    assert chosen.storage == {"transformer": "nf4", "kontext_transformer": "nf4", "text_encoder_2": "nf4"}
    assert plan_quantization("auto", torch.device("cpu")).storage == {}  # nothing planned: the dtype
    with pytest.raises(ValueError, match="--quantize must be one of"):
        plan_quantization("int4", torch.device("cpu"))


def test_profiles_leave_a_quantized_transformer_unfused(files, family):
    from pipelines.models.acceleration import apply_profile
    from pipelines.models.single_file import load_transformer_file

    gguf = load_transformer_file(FluxTransformer2DModel, str(files["Q8_0"]), str(family["dev"]), torch.float32,
                                 local_files_only=True)
    report = apply_profile(gguf, "high", "cpu")
    assert "stored quantized" in report["skipped"]["fuse_qkv"] and "fuse_qkv" not in report["applied"]



def control_image(manager, folder) -> np.ndarray:
    """A Canny control request's image, through the service as every API runs it."""
    from conftest import EXAMPLE_BIRD
    from PIL import Image

    from pipelines.outputs.results import ResultStore
    from pipelines.service import Playground

    playground = Playground(manager, ResultStore(folder))
    request = playground.parse("control", {"prompt": "a bird", "image": Image.open(EXAMPLE_BIRD),
                                           "control_type": "canny", "num_inference_steps": 2, "width": 256,
                                           "height": 256, "seed": 1})
    result = playground.execute(request)
    return np.asarray(Image.open(result.images[0].file).convert("RGB"), dtype=np.float32) / 255


def test_control_loras_on_gguf_and_a_clear_refusal_on_int8(files, tmp_path):
    from pipelines.errors import GenerationError

    plain = control_image(manager_for("float32", files), tmp_path)
    # BFL's Canny LoRA widens x_embedder; diffusers does so on a GGUF transformer too.
    assert np.abs(control_image(manager_for("Q8_0", files), tmp_path) - plain).mean() < TOLERANCE["Q8_0"]
    # PEFT's torchao layers take no LoRA biases, which BFL's control LoRAs carry: said, not a traceback.
    int8 = manager_for("int8", files)
    assert "Control is off" in int8.quantization.status()["control"]
    with pytest.raises(GenerationError, match="Control is off: transformer is stored as int8"):
        control_image(int8, tmp_path)
