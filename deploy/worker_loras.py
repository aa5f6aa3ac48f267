"""Users' LoRAs on Ray Serve: fetched once at the ingress, put in Ray's object store, and taken
up by each worker before its first request that names them.

The ingress keeps the list (what requests may name); a worker's transformer holds the
adapters. A worker that starts late, or again after a crash, catches up from the list that
comes with every request, so no worker ever needs to be told of a load or an unload.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from pipelines.errors import FieldError
from pipelines.loras.adapters import UserLora
from pipelines.models.manager import PipelineManager


@dataclass(frozen=True)
class ShippedLora:
    """A LoRA file as the workers get it: its bytes in the object store, named by content."""

    name: str
    source: str
    file_name: str
    digest: str  # sha256 of the file: the same name loaded again with other weights is another LoRA
    data: ray.ObjectRef | bytes | None  # bytes, or None when not needed, for processes outside Ray

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.digest


def ship_lora(file: Path, name: str, source: str) -> ShippedLora:
    """Put the LoRA file at `file` in the object store (the ingress owns it while it is listed)."""
    data = file.read_bytes()
    return ShippedLora(name, source, file.name, hashlib.sha256(data).hexdigest(), ray.put(data))


def user_lora(shipped: ShippedLora, file: Path, status: dict[str, Any]) -> UserLora:
    """The ingress's record of a LoRA a worker loaded (`status`: the worker's `UserLora.status()`)."""
    return UserLora(shipped.name, shipped.source, file, status["rank"], status["file_bytes"], status["load_seconds"])


class WorkerLoras:
    """One worker's users' LoRAs: what its manager has loaded, kept equal to the ingress's list
    for every LoRA a request names. Call with no other request running on the manager."""

    def __init__(self, manager: PipelineManager, folder: Path):
        self.manager = manager
        self.folder = folder  # the files written from the object store, one folder per digest
        self.loaded: dict[str, str] = {}  # name -> digest

    def take_up(self, listed: dict[str, ShippedLora], named: tuple[tuple[str, float], ...]) -> None:
        """Unload what the ingress no longer lists, then load what the request names and this
        worker lacks."""
        unlisted = [name for name, _ in named if name not in listed]
        if unlisted:
            raise FieldError("loras", f"{', '.join(unlisted)} was unloaded while the request waited; load it again")
        keep = {shipped.key for shipped in listed.values()}
        for name, digest in list(self.loaded.items()):
            if (name, digest) not in keep:
                self.unload(name)
        for name in self.missing(listed, named):
            self.load(listed[name])

    def missing(self, listed: dict[str, ShippedLora], named: tuple[tuple[str, float], ...]) -> list[str]:
        """The LoRAs a request names that `take_up` would load."""
        return [name for name, _ in named if self.loaded.get(name) != listed[name].digest]

    def load(self, shipped: ShippedLora) -> dict[str, Any]:
        """Load one LoRA from the object store onto the transformer; its `UserLora.status()`."""
        if shipped.name in self.loaded:  # the same name with other weights: the old ones go first
            self.unload(shipped.name)
        file = self.folder / shipped.name / shipped.digest / shipped.file_name  # one per name: unloads never share
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            if shipped.data is None:
                raise FileNotFoundError(f"the file of LoRA {shipped.name} was not sent to this rank")
            data = shipped.data if isinstance(shipped.data, bytes) else ray.get(shipped.data)
            file.write_bytes(data)
        lora = self.manager.load_lora(str(file), shipped.name)
        self.loaded[shipped.name] = shipped.digest
        return lora.status()

    def unload(self, name: str) -> None:
        self.loaded.pop(name)
        self.manager.unload_lora(name)
        shutil.rmtree(self.folder / name, ignore_errors=True)
