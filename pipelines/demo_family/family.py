"""A tiny, random-weight FLUX.1 model family, built offline and deterministically.

The folders mirror the Hugging Face hub layouts of black-forest-labs/FLUX.1-dev,
FLUX.1-Kontext-dev and FLUX.1-Redux-dev file for file, and that of the NSFW
classifier BFL's reference code screens outputs with (Falconsai/nsfw_image_detection),
plus (built by adapters.py) FLUX.1-Fill-dev, the Canny/Depth control LoRAs, Depth
Anything V2 Small and style LoRAs, so the project's real loading code
(``from_pretrained`` on the folder or its subfolders) runs on them unchanged: in
tests and as the offline demo model.

Only widths and depths are shrunk. Everything that decides sizes and token
counts is the real one: VAE downscale 8 with 16 latent channels (1024x1024 ->
128x128x16), 2x2 patches (in_channels 64), 77 CLIP tokens, 512 T5 tokens,
SigLIP 384px / patch 14 (729 image tokens), the real scheduler config, ViT 224px /
patch 16 with the labels normal/nsfw.

    python -m pipelines.demo_family [ROOT]
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from pipelines.demo_family.adapters import build_adapters
from pipelines.demo_family.base_models import REPOS, build_base_models

# Bump whenever the output changes: the marker name makes old builds get rebuilt.
FAMILY_VERSION = "3"


def default_root() -> Path:
    """Where the demo family lives: $FLUX_PLAYGROUND_DEMO_MODELS, else <repo>/demo-models."""
    env = os.environ.get("FLUX_PLAYGROUND_DEMO_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "demo-models"


def build_tiny_family(root: Path | None = None) -> dict[str, Path]:
    """Build the folders of REPOS under ``root`` (once); return {key: path} for each."""
    root = Path(root) if root is not None else default_root()
    paths = {key: root / name for key, name in REPOS.items()}
    marker = root / f".complete-{FAMILY_VERSION}"

    def complete() -> bool:
        return marker.exists() and all(path.is_dir() for path in paths.values())

    if complete():
        return paths
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time; the others wait here and then find the marker.
    with _locked(root / ".build.lock"):
        if complete():
            return paths
        for stale in root.glob(".complete-*"):  # an older version's marker
            stale.unlink()
        for stale in root.glob(".building-*"):  # left behind by a killed build
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            with _quiet_libraries(), torch.random.fork_rng(devices=[]):  # leave the caller's RNG alone
                build_base_models(tmp)
                build_adapters(tmp)
            for file in tmp.rglob("*"):  # safetensors writes 0600 files; the hub's are plain 0644
                file.chmod(0o755 if file.is_dir() else 0o644)
            for name in REPOS.values():
                if (root / name).exists():
                    shutil.rmtree(root / name)
                os.replace(tmp / name, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        marker.write_text(FAMILY_VERSION + "\n")  # last: an interrupted build has no marker
    return paths


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _quiet_libraries():
    """No progress bars or "cast with .to()" notices while saving freshly built models."""
    import diffusers.utils.logging as d_log
    import transformers.utils.logging as t_log

    levels, bars = (d_log.get_verbosity(), t_log.get_verbosity()), t_log.is_progress_bar_enabled()
    d_log.set_verbosity_error()
    t_log.set_verbosity_error()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        d_log.set_verbosity(levels[0])
        t_log.set_verbosity(levels[1])
        if bars:
            t_log.enable_progress_bar()


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else default_root()
    paths = build_tiny_family(root)
    for key, path in paths.items():
        print(f"{key:10s} {path}")
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"total      {total / 2**20:.2f} MiB in {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
