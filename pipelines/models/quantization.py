"""Quantized storage of the big components: the FLUX transformers and T5 (`text_encoder_2`).

`--quantize` picks one storage type; `plan_quantization` decides, per component, what each is
stored as here (falling back to the model's dtype, with the reason, where a type cannot run),
and `quantization_kwargs` gives `from_pretrained` the diffusers or transformers config that
stores it so. No kernel is ours: torchao and bitsandbytes quantize as the weights load.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.models.acceleration import float8_support
from pipelines.models.components import TRANSFORMERS

QUANTIZE_CHOICES = ("none", "int8", "fp8", "nf4", "auto")
QUANTIZABLE = (*TRANSFORMERS, "text_encoder_2")
QUANTIZED = ("int8", "fp8", "nf4")
# What PEFT cannot attach a LoRA to, per storage type.
LORA_REFUSALS = {"fp8": "PEFT cannot attach LoRAs to torchao float8 layers"}
# What takes users' LoRAs but not BFL's control LoRAs (they carry LoRA biases), per storage type.
CONTROL_REFUSALS = {"int8": "PEFT's torchao int8 layers take no LoRA biases, which BFL's Canny and Depth LoRAs carry"}


# --- one config per storage type; `library` is "diffusers" or "transformers" -----------------

def _quantization_module(library: str):
    return importlib.import_module("diffusers" if library == "diffusers" else "transformers")


def kept_dense(library: str) -> list[str]:
    """Modules of a FLUX transformer left in the model's dtype: BFL's Canny and Depth LoRAs widen
    `x_embedder` (the image tokens' input projection, 64 -> 128 channels), which a quantized
    layer cannot be; it holds 0.2M of the 12B weights."""
    return ["x_embedder"] if library == "diffusers" else []


def int8_config(library: str):
    """torchao int8 weight-only: int8 weights with per-row scales, matmuls in the model's dtype."""
    from torchao.quantization import Int8WeightOnlyConfig

    return _quantization_module(library).TorchAoConfig(Int8WeightOnlyConfig(),
                                                       modules_to_not_convert=kept_dense(library) or None)


def fp8_config(library: str):
    """torchao float8: e4m3 weights and activations with per-row scales, on float8 tensor cores."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return _quantization_module(library).TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                                                       modules_to_not_convert=kept_dense(library) or None)


def nf4_config(library: str):
    """bitsandbytes 4-bit NF4 with bfloat16 compute (QLoRA's format)."""
    return _quantization_module(library).BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=kept_dense(library) or None)


CONFIGS: dict[str, Callable[[str], Any]] = {"int8": int8_config, "fp8": fp8_config, "nf4": nf4_config}


def quantization_kwargs(component: str, storage: str) -> dict[str, Any]:
    """What `from_pretrained` of `component` needs to store it as `storage` ("none": nothing)."""
    if storage not in CONFIGS:
        return {}
    library = "diffusers" if component in TRANSFORMERS else "transformers"
    return {"quantization_config": CONFIGS[storage](library)}


# --- what runs where ------------------------------------------------------------------------

def unsupported(storage: str, device: torch.device) -> str | None:
    """None when `storage` runs on `device`, else why not and what would make it run."""
    if storage == "fp8":
        return float8_support(device)
    if storage == "nf4":
        if device.type != "cuda":
            return f"nf4 (bitsandbytes 4-bit) needs a CUDA GPU; this runs on {device.type}"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "nf4 needs bitsandbytes, which is not installed (pip install bitsandbytes)"
    if storage in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
        return f"{storage} needs torchao, which is not installed (pip install torchao)"
    return None


def planned_storage(planned: Mapping[str, str]) -> dict[str, str]:
    """`--quantize auto`: the quantized storage the memory plan chose, per component (the
    components it keeps in the model's dtype are left out)."""
    return {name: storage for name, storage in planned.items() if name in QUANTIZABLE and storage in QUANTIZED}


@dataclass(frozen=True)
class QuantizationPlan:
    """What each quantizable component is stored as; a component not named keeps the dtype."""

    requested: str = "none"
    storage: dict[str, str] = field(default_factory=dict)
    fallback: str | None = None  # why the requested type does not run here

    def storage_of(self, component: str) -> str:
        return self.storage.get(component, "none")

    def lora_refusal(self, component: str = "transformer") -> str | None:
        """Why a LoRA cannot go onto `component` as stored, or None."""
        reason = LORA_REFUSALS.get(self.storage_of(component))
        return f"LoRAs are off: {component} is stored as {self.storage_of(component)} and {reason}" if reason else None

    def control_refusal(self, component: str = "transformer") -> str | None:
        """Why structural control (a control LoRA) cannot run on `component` as stored, or None."""
        reason = self.lora_refusal(component)
        if reason is None and self.storage_of(component) in CONTROL_REFUSALS:
            reason = (f"Control is off: {component} is stored as {self.storage_of(component)} and "
                      f"{CONTROL_REFUSALS[self.storage_of(component)]}; start without --quantize for control")
        return reason

    def status(self) -> dict[str, Any]:
        return {"requested": self.requested, "storage": dict(self.storage), "fallback": self.fallback,
                "loras": self.lora_refusal() or "allowed", "control": self.control_refusal() or "allowed"}


def plan_quantization(requested: str, device: torch.device,
                      planned: Mapping[str, str] | None = None) -> QuantizationPlan:
    """The plan for `--quantize requested` on `device`: a type that cannot run here falls back
    to none, and the plan says why (start-up logs it, `/status` shows it). With `auto`, what
    the memory plan chose (`planned`: storage per component)."""
    if requested not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {requested!r}")
    if requested == "auto":
        return QuantizationPlan("auto", planned_storage(planned or {}))
    if requested == "none":
        return QuantizationPlan()
    reason = unsupported(requested, device)
    if reason:
        return QuantizationPlan(requested, fallback=f"--quantize {requested} falls back to none: {reason}")
    return QuantizationPlan(requested, {name: requested for name in QUANTIZABLE})


# --- what a loaded module is stored as, for `/status` ----------------------------------------

def _quantized_format(weight: torch.Tensor) -> str | None:
    if hasattr(weight, "quant_type"):  # diffusers' GGUFParameter
        return f"gguf {weight.quant_type.name}"
    kind = type(weight).__name__
    if kind == "Params4bit":
        return f"{getattr(weight, 'quant_type', 'nf4')} (bitsandbytes)"
    if kind.startswith("Int8"):
        return "int8 (torchao)"
    if kind.startswith("Float8"):
        return "fp8 (torchao)"
    return None


def stored_as(module: torch.nn.Module) -> str:
    """The quantized format of a module's weights (its Linear layers': embeddings and norms stay in
    the dtype), or the dtype of its largest weight when none is quantized."""
    weights = list(module.parameters())
    formats = (_quantized_format(weight) for weight in weights)
    found = next((kind for kind in formats if kind), None)
    if found or not weights:
        return found or "none"
    return str(max(weights, key=lambda t: t.numel()).dtype).removeprefix("torch.")
