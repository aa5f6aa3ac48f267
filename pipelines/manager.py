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
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxPriorReduxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from pipelines.sources import ModelSources, Placement


@dataclass(frozen=True)
class ComponentSpec:
    """One loadable component: which repository, which subfolder, which class loads it."""

    source: str  # "dev", "kontext" or "redux": a field of ModelSources
    subfolder: str
    loader: type


COMPONENTS: dict[str, ComponentSpec] = {
    "scheduler": ComponentSpec("dev", "scheduler", FlowMatchEulerDiscreteScheduler),
    "vae": ComponentSpec("dev", "vae", AutoencoderKL),
    "text_encoder": ComponentSpec("dev", "text_encoder", CLIPTextModel),
    "tokenizer": ComponentSpec("dev", "tokenizer", CLIPTokenizer),
    "text_encoder_2": ComponentSpec("dev", "text_encoder_2", T5EncoderModel),
    "tokenizer_2": ComponentSpec("dev", "tokenizer_2", T5TokenizerFast),
    "transformer": ComponentSpec("dev", "transformer", FluxTransformer2DModel),
    # Kontext shares dev's text encoders, tokenizers, VAE and scheduler; only its
    # transformer differs.
    "kontext_transformer": ComponentSpec("kontext", "transformer", FluxTransformer2DModel),
    "image_encoder": ComponentSpec("redux", "image_encoder", SiglipVisionModel),
    "feature_extractor": ComponentSpec("redux", "feature_extractor", SiglipImageProcessor),
    "image_embedder": ComponentSpec("redux", "image_embedder", ReduxImageEncoder),
}

_TEXT = {
    "text_encoder": "text_encoder",
    "tokenizer": "tokenizer",
    "text_encoder_2": "text_encoder_2",
    "tokenizer_2": "tokenizer_2",
}
_DEV = {"scheduler": "scheduler", "vae": "vae", **_TEXT, "transformer": "transformer"}

# Each pipeline: its diffusers class and, per constructor argument, the component it gets.
PIPELINES: dict[str, tuple[type, dict[str, str]]] = {
    "text_to_image": (FluxPipeline, _DEV),
    "image_to_image": (FluxImg2ImgPipeline, _DEV),
    "kontext_edit": (FluxKontextPipeline, {**_DEV, "transformer": "kontext_transformer"}),
    # Redux's prior gets dev's text encoders so that an optional prompt is encoded too.
    "redux_prior": (
        FluxPriorReduxPipeline,
        {"image_encoder": "image_encoder", "feature_extractor": "feature_extractor",
         "image_embedder": "image_embedder", **_TEXT},
    ),
}
# The pipelines each playground mode runs. Redux feeds its prior's embeddings to the
# text-to-image pipeline on the dev transformer.
MODE_PIPELINES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("text_to_image",),
    "image_to_image": ("image_to_image",),
    "kontext_edit": ("kontext_edit",),
    "redux_variation": ("redux_prior", "text_to_image"),
}


@dataclass
class ComponentRecord:
    """What the manager knows about a loaded component, for `/status`."""

    name: str
    source: str
    subfolder: str
    class_name: str
    load_count: int = 0
    load_seconds: float = 0.0


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def unique_tensor_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct storages behind the modules: shared or copied weights show here."""
    seen: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            storage = tensor.untyped_storage()
            seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


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

    def component(self, name: str) -> Any:
        """The loaded component, loading it on first use."""
        if name not in self._components:
            self._components[name] = self._load(name)
        return self._components[name]

    def _load(self, name: str) -> Any:
        spec = COMPONENTS[name]
        source = getattr(self.sources, spec.source)
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"subfolder": spec.subfolder, "local_files_only": self.local_files_only}
        if self.token:
            kwargs["token"] = self.token
        is_module = issubclass(spec.loader, torch.nn.Module)
        if is_module:
            kwargs["dtype"] = self.placement.dtype
        loaded = spec.loader.from_pretrained(source, **kwargs)
        if is_module:
            loaded = loaded.to(self.placement.device).eval().requires_grad_(False)
        record = self._records.setdefault(
            name, ComponentRecord(name, source, spec.subfolder, type(loaded).__name__)
        )
        record.load_count += 1
        record.load_seconds += time.perf_counter() - started
        return loaded

    def pipeline(self, name: str) -> Any:
        """A pipeline assembled from the shared components, built once."""
        if name not in self._pipelines:
            pipeline_class, slots = PIPELINES[name]
            parts = {slot: self.component(component) for slot, component in slots.items()}
            self._pipelines[name] = pipeline_class(**parts)
            self._pipelines[name].set_progress_bar_config(disable=True)
        return self._pipelines[name]

    def missing_components(self, mode: str) -> list[str]:
        """Components the mode still has to load (its first request pays for them)."""
        needed = {c for name in MODE_PIPELINES[mode] for c in PIPELINES[name][1].values()}
        return sorted(needed - set(self._components))

    def enter_mode(self, mode: str) -> tuple[Any, ...]:
        """The pipelines a mode runs, counting switches between modes. Call with `lock` held."""
        if self._current_mode not in (None, mode):
            self._mode_switches += 1
        self._current_mode = mode
        self._mode_runs[mode] = self._mode_runs.get(mode, 0) + 1
        return tuple(self.pipeline(name) for name in MODE_PIPELINES[mode])

    def preload(self, modes: tuple[str, ...] = ("text_to_image",)) -> None:
        """Load what the given modes need now rather than on their first request."""
        with self.lock:
            for mode in modes:
                for name in MODE_PIPELINES[mode]:
                    self.pipeline(name)

    def status(self) -> dict[str, Any]:
        """State for the status panel and `/status`. No key is named `path`: gradio_client
        would take such a dict for a file to download."""
        # Snapshots: a request may be loading a component in another thread meanwhile.
        loaded_components = dict(self._components)
        built_pipelines = dict(self._pipelines)
        modules = {n: c for n, c in loaded_components.items() if isinstance(c, torch.nn.Module)}
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
                entry["bytes"] = tensor_bytes(loaded)
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
            "models": {mode: self.sources.label_for(mode) for mode in MODE_PIPELINES},
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
