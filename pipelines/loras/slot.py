"""Users' LoRAs on a compiled transformer: one adapter slot, refilled by diffusers' hot-swap.

Dynamo specialises compiled code on which PEFT adapters are active, so with one adapter per
LoRA every new set of LoRAs compiles the transformer's blocks again. With a compiling profile
the users' LoRAs therefore share one adapter (`SLOT`) of a fixed rank on every linear layer:
each LoRA is loaded by diffusers as usual, read off the transformer as factors on the CPU, and
its own adapter deleted again (its text-encoder part stays: the text encoders are not
compiled). A request's LoRAs at their weights make one LoRA, which diffusers' hot-swap
(`load_lora_adapter(..., hotswap=True)`) copies into the slot in place. The slot's modules,
rank and scaling never change, so switching LoRAs or weights compiles nothing.

For LoRAs i with down-projections A_i (r_i x in), up-projections B_i (out x r_i), scalings s_i
(alpha_i / r_i) and request weights w_i:

    sum_i w_i s_i B_i A_i  =  [w_1 s_1 B_1 | w_2 s_2 B_2 | ...] @ [A_1; A_2; ...]

a LoRA of rank sum_i r_i, zero-padded to the slot's rank; its own scaling is 1.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer

SLOT = "playground_loras"  # PEFT matches adapters by substring: a name no user LoRA is given


class SlotError(ValueError):
    """A LoRA or a combination the slot cannot hold."""


@dataclass(frozen=True)
class Factors:
    """A LoRA's update of one linear layer: A (rank x in) and s * B (out x rank), on the CPU."""

    down: torch.Tensor
    up: torch.Tensor


@dataclass(frozen=True)
class FoldedLora:
    """A LoRA as factors per transformer module (names as in the base transformer)."""

    modules: dict[str, Factors]

    @property
    def rank(self) -> int:
        return max((f.down.shape[0] for f in self.modules.values()), default=0)


def linear_layers(transformer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The transformer's linear layers by name, seen through any PEFT wrappers around them."""
    layers = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
            layers[name.removesuffix(".base_layer")] = module
    return layers


def fold_adapter(transformer: torch.nn.Module, adapter: str) -> FoldedLora:
    """Adapter `adapter`'s factors, with its scaling folded into the up-projection."""
    modules = {}
    for name, layer in transformer.named_modules():
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter) or layer.lora_bias.get(adapter):
            raise SlotError("it uses DoRA or LoRA biases, which a compiled transformer's LoRA slot cannot hold")
        down, up = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
        modules[name] = Factors(down.to("cpu", copy=True), (up * layer.scaling[adapter]).to("cpu", copy=True))
    return FoldedLora(modules)


def fit_columns(down: torch.Tensor, in_features: int) -> torch.Tensor:
    """A down-projection fitted to a layer's input width. Only x_embedder's width changes (the
    control LoRAs widen it for their control latents); diffusers pads a LoRA loaded meanwhile
    with zero columns for them, which are dropped again here, or added."""
    if down.shape[1] > in_features:
        return down[:, :in_features]
    return torch.nn.functional.pad(down, (0, in_features - down.shape[1]))


def combined_state_dict(loras: list[tuple[FoldedLora, float]], layers: dict[str, torch.nn.Linear],
                        rank: int) -> dict[str, torch.Tensor]:
    """One LoRA of `rank` whose update is the weighted sum of `loras`, as a state dict in
    diffusers' PEFT keys, on the layers' device. Layers no LoRA touches are left out: the
    hot-swap zeroes them."""
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for folded, weight in loras:
        for name, factors in folded.modules.items():
            parts.setdefault(name, []).append((factors.down, factors.up * weight))
    state = {}
    for name, pairs in parts.items():
        layer = layers[name]
        used = sum(down.shape[0] for down, _ in pairs)
        if used > rank:
            raise SlotError(f"their ranks add up to {used} on {name}; the LoRA slot of a compiled transformer "
                            f"holds rank {rank} (--lora-rank)")
        down = torch.zeros(rank, layer.in_features, dtype=layer.weight.dtype, device=layer.weight.device)
        up = torch.zeros(layer.out_features, rank, dtype=layer.weight.dtype, device=layer.weight.device)
        start = 0
        for part_down, part_up in pairs:
            end = start + part_down.shape[0]
            down[start:end] = fit_columns(part_down, layer.in_features)
            up[:, start:end] = part_up
            start = end
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up
    return state


def empty_state_dict(layers: dict[str, torch.nn.Linear], rank: int) -> dict[str, torch.Tensor]:
    """The slot as first created: every layer, rank `rank`, all zeros (no change to any output)."""
    state = {}
    for name, layer in layers.items():
        weight = layer.weight
        state[f"{name}.lora_A.weight"] = weight.new_zeros(rank, layer.in_features)
        state[f"{name}.lora_B.weight"] = weight.new_zeros(layer.out_features, rank)
    return state


@dataclass
class LoraSlot:
    """The slot on the dev transformer, the users' LoRAs as factors, and what the slot holds."""

    rank: int
    loras: dict[str, FoldedLora] = field(default_factory=dict)
    created: bool = False
    holding: tuple[tuple[str, float], ...] | None = None  # the combination in the slot now
    swaps: int = 0
    swap_seconds: float = 0.0

    def forget(self) -> None:
        """The adapters were taken off the transformer: the slot is gone with them."""
        self.created, self.holding = False, None

    def create(self, transformer) -> None:
        """Put the empty slot on every linear layer, switched off (as for a request without LoRAs)."""
        if not self.created:
            transformer.load_lora_adapter(empty_state_dict(linear_layers(transformer), self.rank), prefix=None,
                                          adapter_name=SLOT)
            transformer.disable_lora()
            self.created, self.holding = True, ()

    def fold(self, transformer, name: str) -> FoldedLora:
        """Take LoRA `name`'s transformer adapter (just loaded by diffusers) into the slot's
        keeping: its factors stay on the CPU, the adapter itself is deleted."""
        try:
            folded = fold_adapter(transformer, name)
            if folded.rank > self.rank:
                raise SlotError(f"its rank is {folded.rank}; the LoRA slot of a compiled transformer holds rank "
                                f"{self.rank} (start the server with --lora-rank {folded.rank} or more)")
        finally:
            if name in getattr(transformer, "peft_config", {}):
                with warnings.catch_warnings():  # PEFT: "Adapter … was active which is now deleted"; as meant
                    warnings.simplefilter("ignore", UserWarning)
                    transformer.delete_adapters(name)
        self.loras[name] = folded
        return folded

    def touches_transformer(self, weights: tuple[tuple[str, float], ...]) -> bool:
        """Whether any of these LoRAs changes the transformer (some change only the text encoder)."""
        return any(self.loras[name].modules for name, _ in weights)

    def fill(self, transformer, weights: tuple[tuple[str, float], ...]) -> None:
        """Hot-swap the combination `weights` into the slot, unless it holds it already."""
        if weights == self.holding:
            return
        started = time.perf_counter()
        state = combined_state_dict([(self.loras[name], weight) for name, weight in weights],
                                    linear_layers(transformer), self.rank)
        transformer.load_lora_adapter(state, prefix=None, adapter_name=SLOT, hotswap=True)
        self.holding = weights
        self.swaps += 1
        self.swap_seconds += time.perf_counter() - started

    def status(self) -> dict:
        return {"rank": self.rank, "created": self.created, "swaps": self.swaps,
                "swap_seconds": round(self.swap_seconds, 3),
                "holding": [list(pair) for pair in self.holding or ()]}
