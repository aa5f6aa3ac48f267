"""Start-up: the real models when they load, otherwise the offline demo family and why."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.manager import PipelineManager
from pipelines.sources import ModelSources, pick_placement
from pipelines.tiny_family import REPOS, build_tiny_family, default_root

log = logging.getLogger("flux_playground")


def demo_manager(placement, fill: bool = False, max_loras: int = 8) -> PipelineManager:
    """The manager on the tiny random-weight family, built offline on first use. As with the
    real models, inpainting uses the Fill model only when asked (`fill`)."""
    folders = dict(build_tiny_family(default_root()))
    if not fill:
        folders.pop("fill", None)
    manager = PipelineManager(ModelSources(fill="").as_demo(folders), placement, local_files_only=True,
                              max_loras=max_loras)
    manager.preload()
    return manager


def demo_lora_folders(manager: PipelineManager) -> tuple[Path, ...]:
    """The demo family's folder of example LoRAs, when the demo family is served."""
    folder = default_root() / REPOS["loras"]
    return (folder,) if manager.sources.demo and folder.is_dir() else ()


def start_manager(args: argparse.Namespace) -> tuple[PipelineManager, str | None]:
    """The real models when they load; otherwise the demo family and the reason why."""
    placement = pick_placement(args.device, args.dtype)
    fill, max_loras = bool(args.fill_model), args.max_loras
    if args.demo:
        return demo_manager(placement, fill, max_loras), "started with --demo"
    if placement.device.type == "cpu" and args.device == "auto":
        reason = "no CUDA accelerator was found (FLUX.1-dev needs a GPU; pass --device cpu to try anyway)"
    else:
        sources = ModelSources.from_env(
            dev=args.dev_model, kontext=args.kontext_model, redux=args.redux_model, safety=args.safety_model,
            fill=args.fill_model, canny_lora=args.canny_lora,
            depth_lora=args.depth_lora, depth=args.depth_model)
        manager = PipelineManager(sources, placement, max_loras=max_loras)
        try:
            manager.preload()
            return manager, None
        except Exception as error:  # gated repo, no token, offline, missing files, OOM…
            reason = f"{sources.dev} could not be loaded: {type(error).__name__}: {error}"
    if args.no_demo_fallback:
        raise SystemExit(f"FLUX Playground: {reason}")
    log.warning("FLUX Playground is starting in DEMO mode: %s", reason)
    return demo_manager(placement, fill, max_loras), reason


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
