"""The pipeline manager: loads each model component once and builds every mode's pipeline from them.

The FLUX transformers stay resident on the accelerator. Pipelines are assembled by passing
the already-loaded components to the diffusers constructors (no `from_pipe`, which casts
shared modules to float32 unless told otherwise), so switching modes never reloads a file,
copies a weight or changes a dtype. Components a mode needs are loaded the first time it
runs (Kontext's transformer, SigLIP) and then stay.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.errors import FieldError
from pipelines.loras import adapters
from pipelines.loras.adapters import UserLora
from pipelines.loras.library import LoraLibrary
from pipelines.models.acceleration import apply_profile
from pipelines.models.context_parallel import enable_context_parallel
from pipelines.models.components import (
    COMPONENTS,
    CONTROL_COMPONENTS,
    PIPELINES,
    TRANSFORMERS,
)
from pipelines.models.quantization import (
    QuantizationPlan,
    quantization_kwargs,
    stored_as,
)
from pipelines.models.residency import (
    Swapper,
    offload,
    tensor_bytes,
    unique_tensor_bytes,
)
from pipelines.models.single_file import is_single_file, load_transformer_file
from pipelines.models.sources import ModelSources, Placement
from presets import PRESETS
from presets.acceleration import ACCELERATION, Profile


@dataclass
class ComponentRecord:
    """What the manager knows about a loaded component, for `/status`."""

    name: str
    source: str
    subfolder: str
    class_name: str
    load_count: int = 0
    load_seconds: float = 0.0


@dataclass
class PipelineManager:
    sources: ModelSources
    placement: Placement
    token: str | None = None
    local_files_only: bool = False
    # One lock for the accelerator: the UI's concurrency group serialises requests too,
    # but direct callers (tests, benchmarks, REST) must not interleave on one pipeline.
    lock: threading.RLock = field(default_factory=threading.RLock)
    _components: dict[str, Any] = field(default_factory=dict)
    _records: dict[str, ComponentRecord] = field(default_factory=dict)
    _pipelines: dict[str, Any] = field(default_factory=dict)
    _current_mode: str | None = None
    _mode_switches: int = 0
    _mode_runs: dict[str, int] = field(default_factory=dict)
    max_loras: int = 8
    # With a compiled dev transformer the users' LoRAs share one adapter of this rank.
    lora_rank: int = field(default_factory=lambda: PRESETS.loras.compiled_rank)
    # The acceleration profile applied to every FLUX transformer as it loads, and where the
    # models live: "resident" (all on the accelerator), "swap" (one FLUX transformer at a time,
    # the others in pinned CPU memory) or "offload" (diffusers' group offloading).
    acceleration: Profile = field(default_factory=lambda: ACCELERATION.profile("none"))
    residency: str = "resident"
    # What the FLUX transformers and T5 are stored as (--quantize): bf16, int8, fp8, nf4.
    quantization: QuantizationPlan = field(default_factory=QuantizationPlan)
    loras: LoraLibrary = field(init=False)  # the users' LoRAs and the adapters on the dev transformer
    _accelerated: dict[str, dict] = field(default_factory=dict)
    compile_info: dict = field(default_factory=dict)  # the compile cache and warm-up, set at start
    _swapper: Swapper | None = None
    # One image over several ranks (context_parallel.py): diffusers' ContextParallelConfig, put
    # on every FLUX transformer as it loads; the process group is set up by the caller.
    context_parallel: Any = None

    def __post_init__(self):
        self.loras = LoraLibrary(self.max_loras)

    def component(self, name: str) -> Any:
        """The loaded component, loading it on first use."""
        if name not in self._components:
            self._components[name] = self._load(name)
        return self._components[name]

    def _load(self, name: str) -> Any:
        spec = COMPONENTS[name]
        source = getattr(self.sources, spec.source)
        started = time.perf_counter()
        if not source:
            raise RuntimeError(f"{name} needs a {spec.source} model, and none is configured")
        quantization = quantization_kwargs(name, self.quantization.storage_of(name))
        if name in TRANSFORMERS and is_single_file(source):
            loaded = load_transformer_file(spec.loader, source, self.sources.base_of(spec.source),
                                           self.placement.dtype, local_files_only=self.local_files_only,
                                           token=self.token, **quantization)
        else:
            loaded = spec.loader.from_pretrained(self.sources.repository(spec.source),
                                                 **self._load_kwargs(spec), **quantization)
        if spec.module:
            loaded = self._place(name, loaded.eval().requires_grad_(False))
        record = self._records.setdefault(
            name, ComponentRecord(name, source, spec.subfolder or "", type(loaded).__name__)
        )
        record.load_count += 1
        record.load_seconds += time.perf_counter() - started
        return loaded

    def _load_kwargs(self, spec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if spec.subfolder:
            kwargs["subfolder"] = spec.subfolder
        if self.token:
            kwargs["token"] = self.token
        if spec.module:
            kwargs["dtype"] = self.placement.dtype
        return kwargs

    def _place(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        """Put a loaded module where the residency policy says, and accelerate a transformer."""
        device = self.placement.device
        if self.residency == "offload":
            offload(module, device)
            return module  # compiled or quantized offloading is untested: offloaded runs as loaded
        if self.residency == "swap" and name in TRANSFORMERS:
            if self._swapper is None:
                self._swapper = Swapper(device)
            self._swapper.register(name, module, on_device=False)
            self._swapper.activate(name)
        else:
            module = module.to(device)
        if name in TRANSFORMERS and self.context_parallel is not None:
            enable_context_parallel(module, self.context_parallel)
        if name in TRANSFORMERS:
            # The dev transformer carries LoRAs (control and users'): fusion and float8 would
            # bypass or break them, so its profile skips those and says so.
            self._accelerated[name] = apply_profile(module, self.acceleration, device, loras=name == "transformer")
            if name == "transformer" and "compile" in self._accelerated[name]["applied"]:
                self.loras.make_slot(module, self.lora_rank)
        return module

    def transformer_report(self, name: str) -> dict:
        """What the acceleration profile did to a transformer (empty before it loads)."""
        return self._accelerated.get(name, {})

    def pipeline(self, name: str) -> Any:
        """A pipeline assembled from the shared components, built once."""
        if name not in self._pipelines:
            pipeline_class, slots = PIPELINES[name]
            parts = {slot: self.component(component) for slot, component in slots.items()}
            self._pipelines[name] = pipeline_class(**parts)
            self._pipelines[name].set_progress_bar_config(disable=True)
        return self._pipelines[name]

    @staticmethod
    def transformer_of(pipeline: str) -> str:
        """The FLUX transformer component a pipeline generates with."""
        return PIPELINES[pipeline][1]["transformer"]

    def missing_components(self, pipelines: tuple[str, ...], control: str | None = None) -> list[str]:
        """Components these pipelines (and the control LoRA `control`) still have to load:
        a mode's first request pays for them."""
        needed = {c for name in pipelines for c in PIPELINES[name][1].values()}
        needed.update(CONTROL_COMPONENTS.get(control, ()))
        return sorted(needed - set(self._components))

    def enter(self, mode: str, pipelines: tuple[str, ...], control: str | None = None,
              loras: tuple[tuple[str, float], ...] = ()) -> tuple[Any, ...]:
        """The pipelines a request of `mode` runs, with the dev transformer's adapters set for
        it: the control LoRA `control` (None: none) and the given user LoRAs at their weights.
        Counts switches between modes. Call with `lock` held."""
        if self._current_mode not in (None, mode):
            self._mode_switches += 1
        self._current_mode = mode
        self._mode_runs[mode] = self._mode_runs.get(mode, 0) + 1
        pipes = tuple(self.pipeline(name) for name in pipelines)
        self._activate(self.transformer_of(pipelines[-1]))
        if pipes[-1].transformer is self._components.get("transformer"):
            self._set_adapters(pipes[-1], control, loras)
        elif getattr(pipes[-1], "text_encoder", None) is not None:
            adapters.activate_text_encoder(pipes[-1], ())  # no LoRA of a dev request stays on the shared CLIP
        return pipes

    def _set_adapters(self, pipe, control: str | None, loras: tuple[tuple[str, float], ...]) -> None:
        refusal = self.quantization.control_refusal() if control else None
        refusal = refusal or (self.quantization.lora_refusal() if loras else None)
        if refusal:
            raise FieldError("control_type" if control else "loras", refusal)
        # Loading the control LoRA may download or fail: before anything is taken off.
        needed = control is not None and self.loras.needs_rebuild(control)
        self.loras.set_for_request(pipe, control, self.component(f"{control}_lora") if needed else None, loras)

    def _activate(self, transformer: str) -> None:
        """Under the "swap" policy, bring the transformer onto the accelerator (the others out)."""
        if self._swapper is not None and transformer in self._components:
            self._swapper.activate(transformer)

    # --- users' LoRAs: the library owns them; the manager gives it the transformer, under the lock ---

    def load_lora(self, source: str, name: str | None = None, weight_name: str | None = None) -> UserLora:
        """Load a LoRA (a file, a folder or a hub repository) onto the dev transformer as
        adapter `name`. It stays inactive until a request names it."""
        refusal = self.quantization.lora_refusal()
        if refusal:
            raise FieldError("source", refusal)
        name = self.loras.checked_name(name, source, weight_name)
        started = time.perf_counter()
        # A hub download happens here, before the accelerator lock: generation goes on meanwhile.
        file = adapters.resolve_lora_file(source, weight_name, self.local_files_only, self.token)
        with self.lock:
            pipe = self.pipeline("text_to_image")
            self._activate("transformer")
            return self.loras.load(pipe, name, source, file, started)

    def unload_lora(self, name: str) -> None:
        with self.lock:
            self._activate("transformer")
            self.loras.unload(self.pipeline("text_to_image"), name)

    def preload(self, pipelines: tuple[str, ...] = ("text_to_image",)) -> None:
        """Load what the given pipelines need now rather than on their first request."""
        with self.lock:
            for name in pipelines:
                self.pipeline(name)

    def status(self) -> dict[str, Any]:
        """State for the status panel and `/status`. No key is named `path`: gradio_client
        would take such a dict for a file to download."""
        # Snapshots: a request may be loading a component in another thread meanwhile.
        loaded_components = dict(self._components)
        built_pipelines = dict(self._pipelines)
        modules = {n: c for n, c in loaded_components.items() if COMPONENTS[n].module}
        by_identity = {id(c): n for n, c in loaded_components.items()}
        components = {}
        for name, loaded in loaded_components.items():
            record = self._records[name]
            entry: dict[str, Any] = {
                "source": record.source,
                "subfolder": record.subfolder,
                "class": record.class_name,
                "load_count": record.load_count,
                "load_seconds": round(record.load_seconds, 3),
            }
            if name in modules:
                entry["device"] = str(next(loaded.parameters()).device)
                entry["dtype"] = str(next(loaded.parameters()).dtype).removeprefix("torch.")
                entry["stored_as"] = stored_as(loaded)
                entry["bytes"] = tensor_bytes(loaded)
                parallel = getattr(loaded, "_parallel_config", None)  # diffusers' mark of enable_parallelism
                if parallel is not None and parallel.context_parallel_config is not None:
                    entry["split_over"] = parallel._world_size  # ranks that share each image
            components[name] = entry
        pipelines = {
            name: {
                "class": type(pipe).__name__,
                # Which loaded component each slot holds, found by object identity.
                "components": {
                    slot: by_identity.get(id(getattr(pipe, slot)), "<not shared>")
                    for slot in PIPELINES[name][1]
                },
            }
            for name, pipe in built_pipelines.items()
        }
        return {
            "demo": self.sources.demo,
            "acceleration": {"profile": self.acceleration.name, "transformers": dict(self._accelerated),
                             **self.compile_info},
            "quantization": self.quantization.status(),
            "residency": self._swapper.status() if self._swapper else {"policy": self.residency},
            "loras": self.loras.status(),
            "adapters": self.loras.adapter_status(),
            "device": str(self.placement.device),
            "dtype": str(self.placement.dtype).removeprefix("torch."),
            "components": components,
            "pipelines": pipelines,
            "current_mode": self._current_mode,
            "mode_switches": self._mode_switches,
            "mode_runs": dict(self._mode_runs),
            "resident_bytes": sum(tensor_bytes(m) for m in modules.values()),
            "unique_resident_bytes": unique_tensor_bytes(list(modules.values())),
        }
