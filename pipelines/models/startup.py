"""Start-up: the real models when they load, otherwise the offline demo family and why."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from pipelines.demo_family.family import REPOS, build_tiny_family, default_root
from pipelines.loras import adapters
from pipelines.models.acceleration import float8_support, setup_compile_cache, warm_up
from pipelines.models.architectures import component_config, component_sizes
from pipelines.models.manager import PipelineManager
from pipelines.models.memory_plan import (
    DENSE_STORAGES,
    MemoryPlan,
    activation_bytes,
    choose_plan,
)
from pipelines.models.quantization import plan_quantization
from pipelines.models.residency import POLICIES, accelerator_memory
from pipelines.models.single_file import is_single_file
from pipelines.models.sources import ModelSources, Placement, pick_placement
from presets.acceleration import ACCELERATION, Profile

log = logging.getLogger("flux_playground")


def demo_sources(fill: bool = False, dev_file: str | None = None) -> ModelSources:
    """The tiny random-weight family's folders, built offline on first use. As with the real
    models, inpainting uses the Fill model only when asked (`fill`); `dev_file`: a single
    transformer file (.safetensors, .gguf) instead of the demo dev transformer."""
    folders = dict(build_tiny_family(default_root()))
    if not fill:
        folders.pop("fill", None)
    sources = ModelSources(fill="").as_demo(folders)
    return replace(sources, dev=dev_file) if dev_file else sources


def demo_manager(placement, fill: bool = False, max_loras: int = 8, dev_file: str | None = None,
                 **options) -> PipelineManager:
    """The manager on the demo family. `options` go to the manager (acceleration, residency,
    quantization)."""
    manager = PipelineManager(demo_sources(fill, dev_file), placement, local_files_only=True,
                              max_loras=max_loras, **options)
    manager.preload()
    return manager


def start_quantization(requested: str, placement: Placement, memory: MemoryPlan):
    """The --quantize plan here (with `auto`, the memory plan's choice); a type that cannot run
    here is logged and falls back to none."""
    plan = plan_quantization(requested, placement.device,
                             {component.name: component.storage for component in memory.components})
    if plan.fallback:
        log.warning("FLUX Playground: %s", plan.fallback)
    if plan.lora_refusal():
        log.warning("FLUX Playground: %s; requests with LoRAs or control are refused", plan.lora_refusal())
    elif plan.control_refusal():
        log.warning("FLUX Playground: %s; control requests are refused", plan.control_refusal())
    return plan


def free_memory(device: torch.device) -> tuple[int, bool]:
    """(free bytes, whether they are an accelerator's): the CUDA device's, else the host's
    (a CPU has no accelerator memory to save; its plan only says whether the models fit)."""
    memory = accelerator_memory(device)
    if memory is not None:
        return memory[0], True
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), False


def plan_memory(placement: Placement, sources: ModelSources, override: str | None,
                quantize_allowed: bool = False) -> MemoryPlan:
    """The memory plan for this card, from the sizes of the configured components'
    architectures (the demo family's own); a residency `override` (not "auto") wins."""
    if override not in (None, "", "auto", *POLICIES):
        raise ValueError(f"residency must be auto or one of {', '.join(POLICIES)}, got {override!r}")
    free, accelerator = free_memory(placement.device)
    activation = activation_bytes(component_config("transformer", sources), component_config("vae", sources),
                                  placement.dtype.itemsize, kontext=bool(sources.kontext))
    return choose_plan(free, component_sizes(sources), activation, quantize_allowed=quantize_allowed,
                       fp8_available=float8_support(placement.device) is None,
                       dense=DENSE_STORAGES[placement.dtype], accelerator=accelerator, policy=override)


def logged_plan(plan: MemoryPlan) -> MemoryPlan:
    log.info("Memory plan:\n%s", plan.table())
    if not plan.fits:
        log.warning("The models may not fit in this accelerator's free memory even with %s", plan.step)
    return plan


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "1024x1024,512x512" as [(1024, 1024), (512, 512)]."""
    return [tuple(int(side) for side in item.lower().split("x")) for item in text.split(",") if item.strip()]


def warm_up_compiled(manager: PipelineManager, sizes: str, compile_cache: dict) -> dict:
    """Compile text-to-image's transformer blocks now, for `sizes` ("auto": the profile's
    usual sizes; "off": none), and save the artifacts so a restart loads them from disk."""
    if not manager.acceleration.compile or sizes == "off":
        return {}
    pipe = manager.pipeline("text_to_image")
    steps = ACCELERATION.compile.warmup_steps

    def run(width: int, height: int):
        with manager.lock, torch.inference_mode():
            pipe(prompt="warm-up", width=width, height=height, num_inference_steps=steps, output_type="latent")
            if manager.loras.has_slot():  # and as requests with LoRAs run, so that their first compiles nothing
                with adapters.slot_switched_on(pipe):
                    pipe(prompt="warm-up", width=width, height=height, num_inference_steps=steps,
                         output_type="latent")

    chosen = None if sizes == "auto" else parse_sizes(sizes)
    return warm_up(run, chosen, save_to=compile_cache.get("dir"))


def demo_lora_folders(manager: PipelineManager) -> tuple[Path, ...]:
    """The demo family's folder of example LoRAs, when the demo family is served."""
    folder = default_root() / REPOS["loras"]
    return (folder,) if manager.sources.demo and folder.is_dir() else ()


def start_manager(args: argparse.Namespace, load: bool = True,
                  context_parallel=None) -> tuple[PipelineManager, str | None, MemoryPlan]:
    """The real models when they load; otherwise the demo family and the reason why. With the
    memory plan the manager was placed by. `load=False`: generation runs elsewhere (Ray Serve's
    ingress): the real models' manager is built but loads, compiles and falls back to nothing.
    `context_parallel`: a ContextParallelConfig for the transformers (its process group set up)."""
    placement = pick_placement(args.device, args.dtype)
    fill, max_loras = bool(args.fill_model), args.max_loras
    profile: Profile = ACCELERATION.profile(args.acceleration)
    if not load:
        return _start(args, placement, fill, max_loras, profile, load=False)
    # Before anything compiles: inductor's cache folder, and what an earlier run saved there.
    compile_cache = setup_compile_cache(args.compile_cache) if profile.compile else {}
    manager, reason, plan = _start(args, placement, fill, max_loras, profile, context_parallel=context_parallel)
    manager.compile_info = {"cache": compile_cache, "warm_up": warm_up_compiled(manager, args.warm_up, compile_cache)}
    return manager, reason, plan


def quantize_allowed(args: argparse.Namespace) -> bool:
    """`--quantize auto`: the plan may store T5 and the transformers in fewer bits."""
    return getattr(args, "quantize", "none") == "auto"


def _start(args, placement: Placement, fill: bool, max_loras: int, profile: Profile, load: bool = True,
           context_parallel=None):
    options = {"acceleration": profile, "lora_rank": args.lora_rank, "context_parallel": context_parallel}
    if args.demo:
        log.warning("FLUX Playground is starting in DEMO mode (--demo): results come from a tiny "
                    "random-weight model and look like noise")
        return _start_demo(args, placement, fill, max_loras, options, "started with --demo")
    if load and placement.device.type == "cpu" and args.device == "auto":
        reason = "no CUDA accelerator was found (FLUX.1-dev needs a GPU; pass --device cpu to try anyway)"
    else:
        sources = ModelSources.from_env(
            dev=args.dev_model, kontext=args.kontext_model, redux=args.redux_model, safety=args.safety_model,
            fill=args.fill_model, canny_lora=args.canny_lora,
            depth_lora=args.depth_lora, depth=args.depth_model, base=args.base_model)
        plan = logged_plan(plan_memory(placement, sources, args.residency, quantize_allowed(args)))
        manager = PipelineManager(sources, placement, max_loras=max_loras, residency=plan.residency,
                                  quantization=start_quantization(args.quantize, placement, plan), **options)
        if not load:
            return manager, None, plan
        try:
            manager.preload()
            return manager, None, plan
        except Exception as error:  # gated repo, no token, offline, missing files, OOM…
            reason = f"{sources.dev} could not be loaded: {type(error).__name__}: {error}"
    if args.no_demo_fallback:
        raise SystemExit(f"FLUX Playground: {reason}")
    log.warning("FLUX Playground is starting in DEMO mode: %s", reason)
    return _start_demo(args, placement, fill, max_loras, options, reason)


def _start_demo(args, placement: Placement, fill: bool, max_loras: int, options: dict, reason: str):
    dev_file = args.dev_model if args.dev_model and is_single_file(args.dev_model) else None
    plan = logged_plan(plan_memory(placement, demo_sources(fill, dev_file), args.residency, quantize_allowed(args)))
    manager = demo_manager(placement, fill, max_loras, dev_file, residency=plan.residency,
                           quantization=start_quantization(args.quantize, placement, plan), **options)
    return manager, reason, plan


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas. Every server thread (Gradio's workers, the request threads)
    otherwise gets an arena of its own that is never given back, so memory climbs for a long
    while under load; measured: +190 MB over 8 bursts of 40 users, against flat with 2 arenas.
    Does nothing where glibc is not the allocator or MALLOC_ARENA_MAX is set already."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
