"""Where the models live: all on the accelerator, transformers swapped, or offloaded.

- resident: every mode's components stay on the accelerator (an H200 holds FLUX.1-dev's and
  Kontext's transformers, T5, CLIP, the VAE and SigLIP: about 58 GB in bf16).
- swap: only one FLUX transformer at a time fits; the others wait in pinned CPU memory and
  `Swapper` moves them in when their mode runs (timed and counted for `/status`).
- offload: a small GPU (24 GB or less) cannot hold even one 12B transformer; diffusers'
  group offloading streams the blocks of each component in as they run.

Which one, for the card and the models configured, the memory plan chooses
(`pipelines/models/memory_plan.py`); this module carries it out.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch


POLICIES = ("resident", "swap", "offload")

def stored_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers as stored: a quantized tensor subclass (torchao's)
    by the plain tensors it holds (int8 data, scales), whose bytes and storages are real."""
    stored, pending = [], [*module.parameters(), *module.buffers()]
    while pending:
        tensor = pending.pop()
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
            pending.extend(getattr(tensor, name) for name in tensor.__tensor_flatten__()[0])
        else:
            stored.append(tensor)
    return stored


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, quantized ones at their stored size."""
    return sum(t.numel() * t.element_size() for t in stored_tensors(module))


def unique_tensor_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct storages behind the modules: shared or copied weights show here."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in stored_tensors(module):
            storage = tensor.untyped_storage()
            seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def accelerator_memory(device: torch.device | str) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device; None elsewhere (CPU memory is not the limit)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)


def offload(module: torch.nn.Module, device: torch.device | str) -> str:
    """diffusers' group offloading, one block at a time. Per component rather than per pipeline
    (as enable_model_cpu_offload is), so components shared between pipelines work."""
    from diffusers.hooks import apply_group_offloading

    device = torch.device(device)
    stream = device.type == "cuda"  # prefetch the next block on a side stream, from pinned memory
    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=stream)
    return f"group offloading, block level{', prefetched on a CUDA stream' if stream else ''}"


class Swapper:
    """Moves named modules between the accelerator and (pinned, on CUDA) CPU memory.

    `activate(name)` makes `name` the one swappable module on the accelerator. Host copies are
    kept and reused, so each module pins its memory once (pinning 24 GB takes seconds) and
    later swaps are plain copies. Copies keep every value exactly; parameters stay the same
    objects, so pipelines and compiled blocks holding them keep working.
    """

    def __init__(self, device: torch.device | str, policy: str = "swap", host: torch.device | str = "cpu",
                 pin: bool | None = None):
        self.device, self.host, self.policy = torch.device(device), torch.device(host), policy
        # Pinned host memory lets copies run asynchronously at full bus speed; only CUDA has it.
        self.pin = self.device.type == "cuda" if pin is None else pin
        self._modules: dict[str, torch.nn.Module] = {}
        self._on_device: dict[str, bool] = {}
        self._host_copies: dict[str, list[torch.Tensor]] = {}
        self.swaps_in: dict[str, int] = {}
        self.swaps_out: dict[str, int] = {}
        self.seconds = 0.0
        self.last_seconds = 0.0

    def register(self, name: str, module: torch.nn.Module, on_device: bool | None = None) -> None:
        """Track a module; where it is now is read from its first parameter unless given."""
        if on_device is None:
            on_device = next(module.parameters()).device.type == self.device.type
        self._modules[name], self._on_device[name] = module, on_device
        self.swaps_in.setdefault(name, 0)
        self.swaps_out.setdefault(name, 0)

    def activate(self, name: str) -> float:
        """Bring `name` onto the accelerator, first moving the other modules out when the policy
        is "swap". Returns the seconds it took (0 when nothing moved)."""
        if self.policy == "offload":
            return 0.0  # diffusers' hooks move the blocks
        leaving = [n for n in self._others(name) if self._on_device[n]] if self.policy == "swap" else []
        if self._on_device[name] and not leaving:
            return 0.0
        started = time.perf_counter()
        for other in leaving:
            self._move_out(other)  # first, so that its memory is free for `name`
        if not self._on_device[name]:
            self._move_in(name)
        self._synchronize()
        self.last_seconds = time.perf_counter() - started
        self.seconds += self.last_seconds
        return self.last_seconds

    def evict(self, name: str) -> float:
        """Move `name` to the host now."""
        if not self._on_device[name]:
            return 0.0
        started = time.perf_counter()
        self._move_out(name)
        self._synchronize()
        self.last_seconds = time.perf_counter() - started
        self.seconds += self.last_seconds
        return self.last_seconds

    def on_device(self) -> list[str]:
        return [name for name, there in self._on_device.items() if there]

    def status(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "pinned": self.pin,
            "on_device": self.on_device(),
            "on_host": [name for name, there in self._on_device.items() if not there],
            "swaps_in": dict(self.swaps_in),
            "swaps_out": dict(self.swaps_out),
            "swap_seconds": round(self.seconds, 3),
            "last_swap_seconds": round(self.last_seconds, 3),
            "host_copy_bytes": sum(t.numel() * t.element_size() for ts in self._host_copies.values() for t in ts),
        }

    def _others(self, name: str) -> list[str]:
        return [other for other in self._modules if other != name]

    def _move_out(self, name: str) -> None:
        module, copies = self._modules[name], self._host_copies.setdefault(name, [])
        if _has_subclass_tensors(module):  # e.g. torchao's float8 weights: let them move themselves
            module.to(self.host)
        else:
            index = itertools.count()

            def to_host(tensor: torch.Tensor) -> torch.Tensor:
                i = next(index)  # _apply visits tensors in the same order every time
                if i == len(copies):
                    copies.append(self._empty_host(tensor))
                elif copies[i].shape != tensor.shape or copies[i].dtype != tensor.dtype:
                    copies[i] = self._empty_host(tensor)  # the module changed (a LoRA added)
                return copies[i].copy_(tensor, non_blocking=self.pin)

            module._apply(to_host)  # what Module.to uses: parameters keep their identity
        self._on_device[name] = False
        self.swaps_out[name] += 1

    def _move_in(self, name: str) -> None:
        module = self._modules[name]
        if _has_subclass_tensors(module):
            module.to(self.device)
        else:
            # A real copy even when host and device are the same (tests): the host copy stays
            # untouched for the next swap out.
            module._apply(lambda t: torch.empty_like(t, device=self.device).copy_(t, non_blocking=self.pin))
        self._on_device[name] = True
        self.swaps_in[name] += 1

    def _empty_host(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=self.host, pin_memory=self.pin)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the copies were asynchronous; time them whole


def _has_subclass_tensors(module: torch.nn.Module) -> bool:
    return any(type(p.data) is not torch.Tensor for p in module.parameters())
