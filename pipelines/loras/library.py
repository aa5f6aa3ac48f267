"""The LoRA lifecycle on the dev transformer: the users' LoRAs loaded, and the adapters a
request needs (the control LoRA of its control type, its LoRAs at their weights) put on.

The manager owns the transformer and its lock and hands the library the pipeline to work on;
the library owns what is loaded and what is applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.errors import FieldError
from pipelines.loras import adapters
from pipelines.loras.adapters import AdapterState, LoraTensors, UserLora
from pipelines.loras.slot import LoraSlot


@dataclass
class LoraLibrary:
    max_loras: int = 8
    _loras: dict[str, UserLora] = field(default_factory=dict)
    _adapters: AdapterState = field(default_factory=AdapterState)

    # --- what is loaded -------------------------------------------------------------------------

    def names(self) -> frozenset[str]:
        return frozenset(self._loras)

    def status(self) -> dict[str, dict]:
        """The loaded LoRAs, by name (what `/status` lists under "loras")."""
        return {name: lora.status() for name, lora in dict(self._loras).items()}

    def adapter_status(self) -> dict:
        return self._adapters.status()

    def has_slot(self) -> bool:
        """Whether users' LoRAs share one hot-swapped adapter (the dev transformer is compiled)."""
        return self._adapters.slot is not None

    def ranks(self) -> tuple[dict[str, int], int | None]:
        """The loaded LoRAs' ranks, and the most they may add up to in one request (None: no limit)."""
        limit = self._adapters.slot.rank if self.has_slot() else None
        return {name: lora.rank or 0 for name, lora in dict(self._loras).items()}, limit

    @staticmethod
    def checked_name(name: str | None, source: str, weight_name: str | None = None) -> str:
        """The adapter name a LoRA gets: the one given, else its file's; FieldError if unusable."""
        name = adapters.clean_name(name) if name else adapters.lora_name(weight_name or source)
        if not name:
            raise FieldError("name", "name must contain letters, digits, - or _")
        if name in adapters.RESERVED_NAMES:
            raise FieldError("name", f"{name!r} is the name of an adapter of the server's own; choose another name")
        return name

    # --- changes, each with the manager's lock held -----------------------------------------------

    def make_slot(self, transformer: torch.nn.Module, rank: int) -> None:
        """The one adapter a compiled transformer's LoRAs share, there from the start so that
        LoRA switches never recompile."""
        self._adapters.slot = LoraSlot(rank)
        with torch.inference_mode(False):
            self._adapters.slot.create(transformer)

    def check_room(self, name: str) -> None:
        """FieldError unless a LoRA named `name` may be loaded now (checked again when it is)."""
        if name in self._loras:
            raise FieldError("name", f"a LoRA named {name!r} is loaded already; unload it or choose another name")
        if len(self._loras) >= self.max_loras:
            raise FieldError("source", f"{self.max_loras} LoRAs are loaded, the most this server keeps; "
                                       "unload one first")

    def load(self, pipe, name: str, source: str, file: Path, started: float) -> UserLora:
        """Load the LoRA in `file` onto `pipe`'s transformer as adapter `name`, inactive until a
        request names it."""
        self.check_room(name)
        lora = UserLora(name, source, file, adapters.lora_rank(file), file.stat().st_size, 0.0)
        try:
            with torch.inference_mode(False):
                adapters.apply_user_lora(pipe, self._adapters, lora)
        except Exception:
            adapters.drop_user_lora(pipe, self._adapters, name)
            raise
        lora.load_seconds = time.perf_counter() - started
        self._loras[name] = lora
        return lora

    def unload(self, pipe, name: str) -> None:
        self.forget(name)
        adapters.drop_user_lora(pipe, self._adapters, name)

    # --- a library that only keeps the list: the LoRAs are applied elsewhere (deploy/'s workers) ---

    def record(self, lora: UserLora) -> None:
        """List `lora` as loaded, its adapter living on another process's transformer."""
        self.check_room(lora.name)
        self._loras[lora.name] = lora

    def forget(self, name: str) -> None:
        """Take `name` off the list; FieldError naming the loaded ones if it is not there."""
        if not name or name not in self._loras:
            unknown = f"{name!r} is not loaded" if name else "name is required: which loaded LoRA to unload"
            raise FieldError("name", f"{unknown} (loaded: {', '.join(self._loras) or 'none'})")
        del self._loras[name]

    def needs_rebuild(self, control: str | None) -> bool:
        """Whether the transformer must be restored and rebuilt for `control` (only a full
        restore takes a control LoRA off; a half-done rebuild is redone)."""
        return self._adapters.stale or self._adapters.control != control

    def set_for_request(self, pipe, control: str | None, control_tensors: LoraTensors | None,
                        loras: tuple[tuple[str, float], ...]) -> None:
        """`pipe`'s transformer with the control LoRA `control` (its tensors loaded by the
        caller, before anything is taken off) and the request's LoRAs at their weights."""
        with torch.inference_mode(False):  # tensors made here outlive the request: no inference tensors
            if self.needs_rebuild(control):
                self._rebuild(pipe, control, control_tensors)
            adapters.activate(pipe, self._adapters, loras)

    def _rebuild(self, pipe, control: str | None, control_tensors: LoraTensors | None) -> None:
        """Restore the base transformer, then apply the control LoRA and the users' LoRAs."""
        state = self._adapters
        started = time.perf_counter()
        adapters.restore_base(pipe, state)
        try:
            if control is not None:
                adapters.apply_control(pipe, state, control, control_tensors)
            if state.slot:
                state.slot.create(pipe.transformer)
            for lora in self._loras.values():
                adapters.reapply_user_lora(pipe, state, lora)
        except Exception:
            state.stale = True  # half applied: the next request restores and applies everything again
            raise
        state.rebuilds += 1
        state.rebuild_seconds += time.perf_counter() - started
