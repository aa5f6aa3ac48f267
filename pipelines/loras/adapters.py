"""LoRA adapters on the resident dev transformer: BFL's control LoRAs and users' LoRAs.

Adapters are applied to the shared transformer in place (PEFT layers), never by reloading it.
The control LoRAs also widen its input projection (64 -> 128 channels, for the control
latents) and overwrite some norms; diffusers' `unload_lora_weights(reset_to_overwritten_params=
True)` restores both exactly, and is the only way back. So a change of control state unloads
every adapter, restores the base transformer, and applies again what the next request needs:
the control LoRA (from tensors kept on the CPU) first, then the users' LoRAs (from their files).
With a compiled transformer the users' LoRAs share one hot-swapped adapter (`lora_slot`).
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file

from pipelines.errors import FieldError
from pipelines.loras import hub
from pipelines.loras.slot import SLOT, LoraSlot, SlotError

# PEFT keeps adapters in module dicts: names may not contain dots.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]+")
CONTROL_ADAPTER = "control_{}"
RESERVED_NAMES = frozenset({SLOT, CONTROL_ADAPTER.format("canny"), CONTROL_ADAPTER.format("depth")})



def lora_name(source: str) -> str:
    """A default adapter name from a source: the file's or repository's name."""
    stem = Path(source.rstrip("/")).name
    for suffix in (".safetensors", ".bin"):
        stem = stem.removesuffix(suffix)
    return clean_name(stem) or "lora"


def clean_name(name: str) -> str:
    return _NOT_IN_NAME.sub("_", name.strip()).strip("_")[:64]


def single_safetensors(folder: Path, weight_name: str | None = None) -> Path:
    """The LoRA file in a folder: `weight_name`, or its only .safetensors file."""
    if weight_name:
        return folder / weight_name
    files = sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise ValueError(f"{folder} holds {len(files)} .safetensors files ({found}); name the one to load")
    return files[0]


def resolve_lora_file(source: str, weight_name: str | None = None, local_files_only: bool = False,
                      token: str | None = None) -> Path:
    """The local file of a LoRA given as a file, a folder, a hub repository ("user/repo") or a
    file in one ("user/repo/file.safetensors"); hub files are downloaded to the hub cache."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        return single_safetensors(path, weight_name)
    return hub.download(source, weight_name, local_files_only, token)


def has_lora_weights(file: Path) -> bool:
    """Whether a safetensors file holds LoRA weights at all (diffusers' own test: a key with "lora")."""
    with safe_open(str(file), framework="pt") as tensors:
        return any("lora" in key for key in tensors.keys())


def load_failure(error: Exception, file: Path) -> str:
    """Why diffusers could not apply a LoRA file to the FLUX.1 [dev] transformer, in words."""
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    if isinstance(error, RuntimeError) and "size mismatch" in str(error):
        return (f"not a LoRA for this server's FLUX.1 [dev] transformer: the weights in {file.name} have other "
                f"shapes than its layers; load a LoRA made for it ({detail})")
    return (f"not a FLUX LoRA: {file.name} does not fit the FLUX.1 [dev] transformer (a LoRA for another model?); "
            f"load a LoRA made for FLUX.1 [dev] ({detail})")


def lora_rank(file: Path) -> int | None:
    """The largest rank among the file's LoRA down-projections (None if it has none)."""
    ranks = []
    with safe_open(str(file), framework="pt") as tensors:
        for key in tensors.keys():
            if key.endswith(("lora_A.weight", "lora_down.weight")):
                ranks.append(tensors.get_slice(key).get_shape()[0])
    return max(ranks, default=None)


class LoraTensors(dict):
    """A LoRA file's tensors as stored, kept on the CPU so that applying the LoRA again (after
    the base transformer was restored) reads no file. Used for BFL's control LoRAs, whose
    files carry no alpha metadata to lose."""

    @classmethod
    def from_pretrained(cls, source: str, subfolder: str | None = None, local_files_only: bool = False,
                        token: str | None = None, **_: Any) -> LoraTensors:
        return cls(load_file(resolve_lora_file(source, None, local_files_only, token)))


@dataclass
class UserLora:
    """A user's LoRA: applied to the transformer from its file whenever the adapters are rebuilt."""

    name: str
    source: str
    file: Path
    rank: int | None
    file_bytes: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    text_encoder: bool = False  # it has a part for the text encoder (an adapter there)

    def status(self) -> dict[str, Any]:
        return {"source": self.source, "file": self.file.name, "rank": self.rank, "file_bytes": self.file_bytes,
                "load_seconds": round(self.load_seconds, 3)}


@dataclass
class AdapterState:
    """What is applied to the dev transformer now."""

    control: str | None = None  # "canny", "depth" or None
    loras: list[str] = field(default_factory=list)  # user LoRAs present as adapters
    rebuilds: int = 0  # times the base transformer was restored and adapters applied again
    rebuild_seconds: float = 0.0
    slot: LoraSlot | None = None  # with a compiled transformer: the users' LoRAs share this adapter
    stale: bool = False  # a rebuild failed half way: the next request rebuilds

    def status(self) -> dict[str, Any]:
        return {"control": self.control, "applied": list(self.loras), "rebuilds": self.rebuilds,
                "rebuild_seconds": round(self.rebuild_seconds, 3),
                "method": "hot-swap slot" if self.slot else "one adapter per LoRA",
                **({"slot": self.slot.status()} if self.slot else {})}


def restore_base(pipe, state: AdapterState) -> None:
    """Remove every adapter and give the transformer back its own input projection and norms."""
    if state.control is not None or state.loras or state.stale or (state.slot and state.slot.created):
        pipe.unload_lora_weights(reset_to_overwritten_params=True)
    state.control, state.loras, state.stale = None, [], False
    if state.slot:
        state.slot.forget()


def apply_control(pipe, state: AdapterState, control: str, tensors: LoraTensors) -> None:
    pipe.load_lora_weights(dict(tensors), adapter_name=CONTROL_ADAPTER.format(control))
    state.control = control


def apply_user_lora(pipe, state: AdapterState, lora: UserLora) -> None:
    """Load a user's LoRA as adapter `lora.name`; with a slot, its transformer part goes into
    the slot's keeping (the slot is made first, so the layers are wrapped once, by it)."""
    if state.slot:
        state.slot.create(pipe.transformer)
    pipe.load_lora_weights(str(lora.file.parent), weight_name=lora.file.name, adapter_name=lora.name)
    state.loras.append(lora.name)
    lora.text_encoder = lora.name in pipe.get_list_adapters().get("text_encoder", [])
    if state.slot:
        try:
            lora.rank = state.slot.fold(pipe.transformer, lora.name).rank
        except SlotError as error:
            raise FieldError("source", f"{lora.name} cannot be applied to the compiled transformer: {error}") from None


def reapply_user_lora(pipe, state: AdapterState, lora: UserLora) -> None:
    """A user's LoRA again after `restore_base`. The slot keeps its transformer factors, so only
    a LoRA with a text-encoder part is read from its file again."""
    if state.slot and lora.name in state.slot.loras and not lora.text_encoder:
        state.loras.append(lora.name)
    else:
        apply_user_lora(pipe, state, lora)


def drop_user_lora(pipe, state: AdapterState, name: str) -> None:
    """Take a user's LoRA off (its adapters on the transformer or the text encoder, its factors)."""
    if any(name in names for names in pipe.get_list_adapters().values()):
        pipe.delete_adapters(name)
    if name in state.loras:
        state.loras.remove(name)
    if state.slot:
        state.slot.loras.pop(name, None)
        state.slot.holding = None  # what it holds may include the LoRA: filled again on next use
    if not state.loras and state.control is None and not state.slot:
        pipe.unload_lora_weights()  # no adapters left: take the PEFT layers off too (a slot stays)


def activate(pipe, state: AdapterState, weights: tuple[tuple[str, float], ...]) -> None:
    """Make exactly the control adapter (weight 1) and the requested LoRAs active; with none
    of either, turn adapters off, so the transformer computes what the base model does."""
    if state.slot:
        return activate_slot(pipe, state, weights)
    names = ([CONTROL_ADAPTER.format(state.control)] if state.control else []) + [name for name, _ in weights]
    values = ([1.0] if state.control else []) + [weight for _, weight in weights]
    if not names:
        if state.loras:
            pipe.disable_lora()
        return
    pipe.enable_lora()
    pipe.set_adapters(names, adapter_weights=values)


@contextmanager
def slot_switched_on(pipe):
    """The (empty) LoRA slot active, as in a request with LoRAs: to compile that graph ahead."""
    pipe.transformer.enable_lora()
    pipe.transformer.set_adapters([SLOT], [1.0])
    try:
        yield
    finally:
        pipe.transformer.disable_lora()


def activate_slot(pipe, state: AdapterState, weights: tuple[tuple[str, float], ...]) -> None:
    """`activate` with a slot: the request's LoRAs are hot-swapped into the slot, which is
    active at weight 1 beside the control adapter; text-encoder parts are their own adapters."""
    activate_text_encoder(pipe, weights)
    transformer = pipe.transformer
    names = [CONTROL_ADAPTER.format(state.control)] if state.control else []
    if state.slot.touches_transformer(weights):
        try:
            state.slot.fill(transformer, weights)
        except SlotError as error:
            raise FieldError("loras", str(error)) from None
        names.append(SLOT)
    if not names:
        if state.slot.created:
            transformer.disable_lora()
        return
    transformer.enable_lora()
    transformer.set_adapters(names, [1.0] * len(names))


def activate_text_encoder(pipe, weights: tuple[tuple[str, float], ...]) -> None:
    """Make exactly the text-encoder parts of the given LoRAs active (none: all off). CLIP is
    shared by every mode, Kontext and Fill too, which take no LoRAs."""
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    encoder_adapters = set(pipe.get_list_adapters().get("text_encoder", []))
    encoder_weights = [(name, weight) for name, weight in weights if name in encoder_adapters]
    if encoder_weights:
        enable_lora_for_text_encoder(pipe.text_encoder)
        set_adapters_for_text_encoder([n for n, _ in encoder_weights], pipe.text_encoder,
                                      [w for _, w in encoder_weights])
    elif encoder_adapters:
        disable_lora_for_text_encoder(pipe.text_encoder)
