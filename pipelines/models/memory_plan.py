"""A memory plan for the card: per component, how its weights are stored and where they live.

Pure functions of explicit inputs: the accelerator's free bytes, each component's size (its
architecture's parameter counts, `architectures.ComponentSize`), whether quantization is
allowed and whether float8 runs on the card. `FALLBACKS` is the order of the choice: the first
plan whose expected peak fits is taken.

Expected peak = the weights on the accelerator (resident ones, plus the largest swapped-in
transformer, plus what group offloading holds at once) + `activation_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from pipelines.models.architectures import (
    MLP_RATIO,
    T5_TOKENS,
    ComponentSize,
    image_tokens,
)
from pipelines.models.components import TRANSFORMERS
from presets.acceleration import GiB

RESIDENT, SWAP, OFFLOAD = "resident", "swap", "offload"  # the names of residency.POLICIES
T5 = "text_encoder_2"
# Under `nvidia-smi`'s total: the CUDA context and the driver's reserve, for simulated cards.
CUDA_CONTEXT_BYTES = GiB // 2
# The caching allocator's rounding and fragmentation, cuBLAS workspaces and the safety checker
# (ViT-B/16, 0.17 GB) on top of the largest activation.
ALLOCATOR_MARGIN_BYTES = 1 * GiB
PLANNED_SIZE = (1024, 1024)  # the request the allowance is sized for: 1024², one image


@dataclass(frozen=True)
class Storage:
    """How weights are stored: bytes per linear weight; every other tensor stays dense."""

    name: str
    bytes_per_weight: float


STORAGES = {
    "bf16": Storage("bf16", 2), "fp16": Storage("fp16", 2), "fp32": Storage("fp32", 4),
    # One byte a weight and a float32 scale per output row (rows are thousands of weights wide).
    "fp8": Storage("fp8", 1 + 4 / 3072), "int8": Storage("int8", 1 + 4 / 3072),
    # bitsandbytes' NF4: 4-bit codes, an 8-bit absmax per block of 64 weights, and (double
    # quantization) a float32 scale per 256 absmax values.
    "nf4": Storage("nf4", 0.5 + 1 / 64 + 4 / (64 * 256)),
}

# The dense storage of each placement dtype (the manager loads the models in it).
DENSE_STORAGES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Fallback:
    """One step of the choice: where the transformers and the others live, and which
    components are stored in how many bits ("" dense, "8bit", "nf4")."""

    name: str
    transformers: str
    others: str = RESIDENT
    quantized: tuple[str, ...] = ()
    bits: str = ""


FALLBACKS = (
    Fallback("everything resident", RESIDENT),
    Fallback("transformers swapped", SWAP),
    Fallback("transformers swapped, T5 in 8 bits", SWAP, quantized=(T5,), bits="8bit"),
    Fallback("transformers swapped, T5 and transformers in 8 bits", SWAP, quantized=(T5, *TRANSFORMERS), bits="8bit"),
    Fallback("transformers swapped, T5 and transformers in NF4", SWAP, quantized=(T5, *TRANSFORMERS), bits="nf4"),
    Fallback("group offloading", OFFLOAD, others=OFFLOAD),
)
POLICY_FALLBACKS = {RESIDENT: FALLBACKS[0], SWAP: FALLBACKS[1], OFFLOAD: FALLBACKS[-1]}  # --residency overrides


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    storage: str
    place: str  # resident on the accelerator, swapped in from pinned CPU memory, or group-offloaded
    bytes: int
    offload_bytes: int  # what group offloading holds on the accelerator for it at once


@dataclass(frozen=True)
class MemoryPlan:
    step: str  # the fallback chosen
    components: tuple[ComponentPlan, ...]
    free_bytes: int
    activation_bytes: int
    peak_bytes: int

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.free_bytes

    @property
    def residency(self) -> str:
        """The manager's residency policy that carries this plan out."""
        places = {c.place for c in self.components}
        return next((place for place in (OFFLOAD, SWAP) if place in places), RESIDENT)

    def status(self) -> dict:
        return {
            "step": self.step, "residency": self.residency, "fits": self.fits, "free_bytes": self.free_bytes,
            "activation_bytes": self.activation_bytes, "peak_bytes": self.peak_bytes,
            "components": {c.name: {"storage": c.storage, "place": c.place, "bytes": c.bytes} for c in self.components},
        }

    def table(self) -> str:
        """The plan as printed at start: one row per component, then the expected peak."""
        rows = [f"{'component':<20} {'storage':<7} {'place':<8} {'size':>9}"]
        rows += [f"{c.name:<20} {c.storage:<7} {c.place:<8} {size_text(c.bytes):>9}" for c in self.components]
        rows.append(f"memory plan: {self.step}; expected peak {size_text(self.peak_bytes)} "
                    f"of {size_text(self.free_bytes)} free{'' if self.fits else ' (does not fit)'}")
        return "\n".join(rows)


def size_text(count: int) -> str:
    """Bytes as GB (10⁹) from 1 GB up, else MB."""
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.2f} MB"


# --- the activation allowance -----------------------------------------------------------------


def transformer_activation_bytes(config: Mapping, tokens: int, dense_bytes: int) -> int:
    """The activations alive at once inside a FLUX single-stream block (the double-stream ones
    hold no more), per token, in units of the model width: the residual, the norm, Q, K and V,
    the attention output, the MLP's up-projection and its GELU, their concatenation and
    `proj_out`. Attention itself is a fused kernel on CUDA: no tokens² matrix. Inference
    frees each block's activations before the next, so the step count does not matter."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    live_widths = 1 + 1 + 3 + 1 + 2 * MLP_RATIO + (1 + MLP_RATIO) + 1
    return tokens * width * live_widths * dense_bytes


def vae_decode_bytes(config: Mapping, width: int, height: int, dense_bytes: int) -> int:
    """The decoder's peak: its first full-resolution ResnetBlock2D holds its input, the
    GroupNorm of that and the SiLU of that, each `block_out_channels[1]` channels wide."""
    return 3 * config["block_out_channels"][1] * width * height * dense_bytes


def activation_bytes(transformer: Mapping, vae: Mapping, dense_bytes: int, kontext: bool,
                     size: tuple[int, int] = PLANNED_SIZE) -> int:
    """The allowance for one image of `size` (1024²; any number of steps): the larger of the
    transformer's and the VAE decoder's activations (they never run at once), plus the
    allocator's margin. Kontext's sequence carries the reference image's tokens too."""
    tokens = image_tokens(*size) * (2 if kontext else 1) + T5_TOKENS
    largest = max(transformer_activation_bytes(transformer, tokens, dense_bytes),
                  vae_decode_bytes(vae, *size, dense_bytes))
    return largest + ALLOCATOR_MARGIN_BYTES


# --- one plan ---------------------------------------------------------------------------------


def eight_bit(fp8_available: bool) -> str:
    """fp8 where the card has float8 tensor cores (compute capability 8.9 and up), else int8."""
    return "fp8" if fp8_available else "int8"


def storage_of(name: str, fallback: Fallback, dense: str, fp8_available: bool) -> str:
    if name not in fallback.quantized:
        return dense
    return eight_bit(fp8_available) if fallback.bits == "8bit" else fallback.bits


def place_of(name: str, fallback: Fallback) -> str:
    return fallback.transformers if name in TRANSFORMERS else fallback.others


def stored_bytes(params: int, linear_params: int, storage: str, dense: str) -> int:
    """Bytes of `params` weights when the `linear_params` among them are stored as `storage`."""
    quantized = linear_params * STORAGES[storage].bytes_per_weight
    return math.ceil(quantized + (params - linear_params) * STORAGES[dense].bytes_per_weight)


def component_plan(name: str, size: ComponentSize, fallback: Fallback, dense: str,
                   fp8_available: bool) -> ComponentPlan:
    storage = storage_of(name, fallback, dense, fp8_available)
    total = stored_bytes(size.params, size.linear_params, storage, dense)
    offload_share = size.offload_params / size.params if size.params else 0.0
    return ComponentPlan(name, storage, place_of(name, fallback), total, math.ceil(total * offload_share))


def weights_peak_bytes(components: tuple[ComponentPlan, ...]) -> int:
    """Weights on the accelerator at the worst moment: every resident one, the largest swapped
    transformer (one at a time) and the offloaded component holding the most at once (they
    run one after another)."""
    resident = sum(c.bytes for c in components if c.place == RESIDENT)
    swapped = max((c.bytes for c in components if c.place == SWAP), default=0)
    offloaded = max((c.offload_bytes for c in components if c.place == OFFLOAD), default=0)
    return resident + swapped + offloaded


def plan_for(fallback: Fallback, free_bytes: int, sizes: Mapping[str, ComponentSize], activation: int,
             dense: str = "bf16", fp8_available: bool = False) -> MemoryPlan:
    components = tuple(component_plan(name, size, fallback, dense, fp8_available) for name, size in sizes.items())
    return MemoryPlan(fallback.name, components, free_bytes, activation, weights_peak_bytes(components) + activation)


# --- the choice -------------------------------------------------------------------------------


def candidates(quantize_allowed: bool, accelerator: bool = True) -> tuple[Fallback, ...]:
    """The fallbacks to try, in order: quantizing ones only when allowed; on a CPU there is no
    accelerator memory to save, so the models stay where they are."""
    if not accelerator:
        return FALLBACKS[:1]
    return tuple(f for f in FALLBACKS if quantize_allowed or not f.quantized)


def choose_plan(free_bytes: int, sizes: Mapping[str, ComponentSize], activation: int, *,
                quantize_allowed: bool = False, fp8_available: bool = False, dense: str = "bf16",
                accelerator: bool = True, policy: str | None = None) -> MemoryPlan:
    """The first plan of `candidates` that fits in `free_bytes` (else the last one, which says it
    does not fit); a residency `policy` (resident, swap, offload) given by the user wins."""
    options = (POLICY_FALLBACKS[policy],) if policy in POLICY_FALLBACKS else candidates(quantize_allowed, accelerator)
    plans = [plan_for(f, free_bytes, sizes, activation, dense, fp8_available) for f in options]
    return next((plan for plan in plans if plan.fits), plans[-1])


def simulated_free_bytes(card_gib: float) -> int:
    """What `torch.cuda.mem_get_info` reports free on an idle card of `card_gib` GiB."""
    return int(card_gib * GiB) - CUDA_CONTEXT_BYTES
