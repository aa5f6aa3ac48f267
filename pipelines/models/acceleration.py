"""Acceleration profiles applied to a loaded FLUX transformer, and step caching per request.

Every speed-up is a diffusers, torch or torchao API; this module only decides which apply
here and reports why the others do not:

- `apply_profile` changes the transformer once, at start: fused QKV projections, float8
  dynamic quantization, the attention backend, then regional compilation (last, so that it
  traces the final modules). Compiled blocks are shared by every pipeline holding the
  transformer, so a mode switch never recompiles.
- `request_cache` hooks First Block Cache or TaylorSeer onto the transformer for one call
  and always takes the hooks off after, so the next uncached request is bit-identical to
  one made before.
- `setup_compile_cache`, `warm_up` and `save_compile_cache` keep compiled artifacts on disk
  so that a restart does not compile again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipelines.models.residency import tensor_bytes
from presets.acceleration import (
    ACCELERATION,
    CACHE_KINDS,
    Acceleration,
    Profile,
    compile_cache_dir,
)

MEGA_CACHE_FILE = "mega-cache.bin"


class Skipped(Exception):
    """A speed-up that does not apply here; the message says why."""


# --- the global part: applied once per transformer ------------------------------------------

def stored_quantized(transformer) -> bool:
    """Whether the weights are stored quantized already (--quantize, a GGUF file): tensor
    subclasses (torchao's, diffusers' GGUFParameter) rather than plain parameters."""
    return any(type(p) is not torch.nn.Parameter for p in transformer.parameters())


def fuse_qkv(transformer, loras: bool = False) -> str:
    """One matmul for Q, K and V (and for the text stream's) instead of three."""
    if stored_quantized(transformer):
        raise Skipped("the transformer is stored quantized (--quantize or a GGUF file): its weights are not fused")
    if loras:
        raise Skipped("the transformer carries LoRAs, which attach to to_q/to_k/to_v: "
                      "the fused projection would bypass them")
    before = tensor_bytes(transformer)
    transformer.fuse_qkv_projections()
    fused = sum(1 for m in transformer.modules() if getattr(m, "fused_projections", False))
    # diffusers keeps the separate projections so that unfuse_qkv_projections() can undo it.
    return f"{fused} attention modules (+{tensor_bytes(transformer) - before} bytes kept for unfusing)"


def float8_support(device: torch.device, settings: Acceleration = ACCELERATION) -> str | None:
    """None when float8 matmuls run on `device`, else why not."""
    needed = _version(settings.float8_min_capability)
    if device.type != "cuda":
        return f"float8 matmuls need a CUDA GPU of compute capability >= {needed}; this runs on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < settings.float8_min_capability:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {_version(capability)}; "
                f"float8 tensor cores need >= {needed}")
    return None


def quantize_float8(transformer, device: torch.device, loras: bool = False,
                    settings: Acceleration = ACCELERATION) -> str:
    """torchao's float8 dynamic quantization of every Linear: weights once, activations per call."""
    reason = float8_support(device, settings)
    if reason:
        raise Skipped(reason)
    if stored_quantized(transformer):
        raise Skipped("the transformer is stored quantized already (--quantize or a GGUF file)")
    if loras:
        raise Skipped("the transformer carries LoRAs, and PEFT cannot attach them to torchao float8 layers")
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )
    except ImportError:
        raise Skipped("torchao is not installed (pip install torchao)") from None
    rows = torch.cuda.get_device_capability(device) >= settings.float8_row_scales_from
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if rows else PerTensor()))
    return f"float8 e4m3 weights and activations, {'per-row' if rows else 'per-tensor'} scales"


def _version(capability: tuple[int, int]) -> str:
    return ".".join(map(str, capability))


def _probe_attention(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Run the backend once on small FLUX-shaped tensors; raise unless it matches torch's SDPA."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
        dispatch_attention_fn,
    )

    name = AttentionBackendName(backend)
    _check_attention_backend_requirements(name)  # says which package is missing
    generator = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 128, generator=generator, device=device, dtype=dtype) for _ in range(3))
    out = dispatch_attention_fn(q, k, v, backend=name)
    reference = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(out.float(), reference.transpose(1, 2).float(), atol=2e-2, rtol=2e-2)


def set_best_attention(transformer, device: torch.device, dtype: torch.dtype,
                       settings: Acceleration = ACCELERATION) -> str:
    """The first backend of the device's preference list that is installed and runs correctly
    on `dtype` (the activations' dtype: the transformer's before any quantization)."""
    candidates = settings.attention_cuda if device.type == "cuda" else settings.attention_other
    rejected = {}
    for backend in candidates:
        if backend == "native":
            # torch's SDPA is what the processors use unset; setting it would only change
            # diffusers' process-wide active backend.
            return "native (torch SDPA)" + _rejections(rejected)
        try:
            # Probe first: set_attention_backend also sets diffusers' process-wide default.
            _probe_attention(backend, device, dtype)
            transformer.set_attention_backend(backend)
            return backend + _rejections(rejected)
        except Exception as error:  # noqa: BLE001 - missing package, unsupported GPU or dtype, wrong result
            rejected[backend] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
    raise Skipped(f"no attention backend of {candidates} runs here{_rejections(rejected)}")


def _rejections(rejected: dict[str, str]) -> str:
    return "".join(f"; not {name}: {why}" for name, why in rejected.items())


def compiled_blocks(transformer) -> list[str]:
    """Names of the submodules torch.compile wraps (nn.Module.compile sets _compiled_call_impl)."""
    return [name for name, m in transformer.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


def compile_blocks(transformer, settings: Acceleration = ACCELERATION) -> str:
    """Regional compilation: each repeated block class compiles once and serves all its blocks."""
    for limit in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.7
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit),
                                                     settings.compile.recompile_limit))
            break
    transformer.compile_repeated_blocks(fullgraph=settings.compile.fullgraph)
    classes = ", ".join(transformer._repeated_blocks)
    return f"{len(compiled_blocks(transformer))} blocks ({classes}), fullgraph={settings.compile.fullgraph}"


def apply_profile(transformer, profile: Profile | str, device: torch.device | str, *, loras: bool = False,
                  settings: Acceleration = ACCELERATION) -> dict[str, Any]:
    """Apply a profile's global speed-ups to a transformer already on `device`.

    `loras`: the transformer will carry PEFT LoRAs (FLUX.1-dev's: control and user LoRAs);
    fusion and float8 are then skipped, since both would bypass or break the adapters.
    Returns what was applied and what was skipped and why, for `/status`.
    """
    profile = settings.profile(profile) if isinstance(profile, str) else profile
    device = torch.device(device)
    dtype = next(transformer.parameters()).dtype
    started = time.perf_counter()
    steps: list[tuple[str, bool, Callable[[], str]]] = [
        ("fuse_qkv", profile.fuse_qkv, lambda: fuse_qkv(transformer, loras)),
        ("float8", profile.float8, lambda: quantize_float8(transformer, device, loras, settings)),
        ("attention", profile.attention == "best", lambda: set_best_attention(transformer, device, dtype, settings)),
        ("compile", profile.compile, lambda: compile_blocks(transformer, settings)),
    ]
    applied, skipped = {}, {}
    for name, wanted, step in steps:
        if not wanted:
            continue
        try:
            applied[name] = step()
        except Skipped as reason:
            skipped[name] = str(reason)
    return {
        "profile": profile.name,
        "applied": applied,
        "skipped": skipped,
        "float8": "float8" in applied,
        "cache_default": profile.cache,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --- the per-request part: step caching -----------------------------------------------------

def request_cache_kind(profile: Profile, requested: bool | str | None = None) -> str:
    """The caching a request runs with: its own choice (on/off or a kind), else the profile's."""
    if requested is None:
        return profile.cache
    if isinstance(requested, str):
        if requested not in CACHE_KINDS:
            raise ValueError(f"cache must be one of {', '.join(CACHE_KINDS)}, got {requested!r}")
        return requested
    if not requested:
        return "off"
    return profile.cache if profile.cache != "off" else "first_block"


def cache_config(kind: str, float8: bool = False, settings: Acceleration = ACCELERATION):
    """The diffusers cache config of a kind ("off": None)."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if kind == "off":
        return None
    if kind == "first_block":
        fbc = settings.first_block
        return FirstBlockCacheConfig(threshold=fbc.threshold_float8 if float8 else fbc.threshold)
    if kind == "taylorseer":
        ts = settings.taylorseer
        return TaylorSeerCacheConfig(cache_interval=ts.cache_interval, max_order=ts.max_order,
                                     disable_cache_before_step=ts.disable_cache_before_step)
    raise ValueError(f"unknown cache kind {kind!r}")


def names_its_calls(pipe) -> bool:
    """Whether the pipeline names each transformer call ("cond", "uncond"), so that true CFG's two
    passes keep separate cache states. In diffusers 0.42 only FluxPipeline does."""
    from diffusers import FluxPipeline

    return isinstance(pipe, FluxPipeline)


@contextmanager
def request_cache(pipe, kind: str, *, float8: bool = False, true_cfg: bool = False,
                  settings: Acceleration = ACCELERATION) -> Iterator[str]:
    """Step caching on the pipeline's transformer for the duration of the block, off again after
    it even when the call fails. Yields the caching that runs: "off" for a true-CFG call of a
    pipeline that does not name its passes (caching would compare the conditional pass with the
    unconditional one). The hooks are fresh each time, and every pipeline call resets them
    (maybe_free_model_hooks), so no state passes between images or requests."""
    if true_cfg and not names_its_calls(pipe):
        kind = "off"
    config = cache_config(kind, float8, settings)
    if config is None:
        yield "off"
        return
    transformer = pipe.transformer
    transformer.enable_cache(config)
    try:
        # The cache hooks need a named call; FluxPipeline names its own inside this one.
        with transformer.cache_context("cond"):
            yield kind
    finally:
        transformer.disable_cache()


# --- compiled artifacts on disk ---------------------------------------------------------------

def setup_compile_cache(folder: str | os.PathLike | None = None, settings: Acceleration = ACCELERATION,
                        env: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
    """Point inductor's on-disk caches (FX graphs, Triton kernels, autotuning) into `folder`
    and load the mega-cache saved by an earlier run. A TORCHINDUCTOR_CACHE_DIR set by the user
    wins. Call before the first compilation."""
    folder = compile_cache_dir(folder, settings, env)
    folder.mkdir(parents=True, exist_ok=True)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    return {"dir": str(folder), "inductor_dir": env["TORCHINDUCTOR_CACHE_DIR"], "loaded": load_compile_cache(folder)}


def load_compile_cache(folder: str | os.PathLike) -> dict[str, Any]:
    """Hot-load saved artifacts (torch.compiler.load_cache_artifacts): they land in inductor's
    caches, so the next compilation of the same graphs is a cache hit."""
    file = Path(folder) / MEGA_CACHE_FILE
    if not file.is_file():
        return {"artifacts": 0}
    info = torch.compiler.load_cache_artifacts(file.read_bytes())
    counts = {kind: len(keys) for kind, keys in info.artifacts.items()} if info else {}
    return {"artifacts": sum(counts.values()), "kinds": counts, "bytes": file.stat().st_size}


def save_compile_cache(folder: str | os.PathLike) -> dict[str, Any]:
    """Save everything compiled in this process so far (torch.compiler.save_cache_artifacts)."""
    saved = torch.compiler.save_cache_artifacts()
    if not saved:
        return {"artifacts": 0}
    data, info = saved
    file = Path(folder) / MEGA_CACHE_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, file)  # a crash mid-write never leaves a truncated cache
    counts = {kind: len(keys) for kind, keys in info.artifacts.items()}
    return {"artifacts": sum(counts.values()), "kinds": counts, "bytes": len(data)}


def warm_up(run: Callable[[int, int], object], sizes: Iterable[tuple[int, int]] | None = None, *,
            save_to: str | os.PathLike | None = None, settings: Acceleration = ACCELERATION) -> dict[str, Any]:
    """Call `run(width, height)` once per size so that requests never pay for compilation, then
    save the artifacts to `save_to`. `run` should make a short request (the profile's
    warmup_steps, with and without caching where caching may be asked for)."""
    sizes = settings.compile.warmup_sizes if sizes is None else tuple(sizes)
    seconds = {}
    for width, height in sizes:
        started = time.perf_counter()
        run(width, height)
        seconds[f"{width}x{height}"] = round(time.perf_counter() - started, 3)
    result: dict[str, Any] = {"sizes": seconds, "seconds": round(sum(seconds.values()), 3)}
    if save_to is not None:
        result["saved"] = save_compile_cache(save_to)
    return result
