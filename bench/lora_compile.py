"""Benchmark: LoRA switches on a compiled transformer, on the offline demo family.

    python -m bench.lora_compile [--profile regular] [--size 256] [--steps 2]

Loads the demo family's two style LoRAs onto the dev transformer of a manager with a compiling
acceleration profile, then runs a sequence of text-to-image and control requests that switch
LoRAs, combinations and weights, printing for each its seconds and how many graphs dynamo
compiled for it, after the warm-up the app runs at start. The LoRAs share one hot-swapped
adapter (pipelines/lora_slot.py), which the warm-up compiles switched on as well as off, so
no text-to-image request compiles anything: not a new LoRA, a new combination or a new
weight. Only the first request in each control state compiles (control's LoRA, and control's
LoRA with the slot on); control is not warmed up, as its LoRAs load on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Each request's mode and `loras` field, in order. Control puts its LoRA on the transformer
# and takes everything off again when another mode runs (the adapters are rebuilt). Requests
# 11 and 15 are the first in a new control state; 2, 5 and 7 switch to a LoRA and to a
# combination not used before.
SEQUENCE = (
    ("text_to_image", ""), ("text_to_image", "a:1"), ("text_to_image", "a:0.5"), ("text_to_image", "a:0.7"),
    ("text_to_image", "b:1"), ("text_to_image", "a:1"), ("text_to_image", "a:1, b:0.5"), ("text_to_image", ""),
    ("text_to_image", "a:0.3"), ("text_to_image", "a:1, b:0.5"),
    ("control", ""), ("text_to_image", "a:1"), ("control", ""), ("text_to_image", "a:1"), ("control", "a:1"),
    ("text_to_image", ""), ("control", "a:1"), ("text_to_image", ""),
)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="regular", choices=("regular", "high"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)

    from torch._dynamo.utils import counters

    from pipelines.demo_family.family import build_tiny_family, default_root
    from pipelines.models.acceleration import setup_compile_cache
    from pipelines.models.sources import pick_placement
    from pipelines.models.startup import demo_manager, warm_up_compiled
    from pipelines.outputs.results import ResultStore
    from pipelines.service import Playground
    from presets.acceleration import ACCELERATION

    setup_compile_cache(tempfile.mkdtemp(prefix="bench-compile-"))  # a cold cache: compiles are real
    manager = demo_manager(pick_placement(), acceleration=ACCELERATION.profile(args.profile))
    playground = Playground(manager, ResultStore(Path(tempfile.mkdtemp(prefix="bench-results-"))))
    graphs = counters["stats"]["unique_graphs"]
    warmed = warm_up_compiled(manager, f"{args.size}x{args.size}", {})  # as the app does at start
    print(f"warm-up at start: {warmed['seconds']:.2f} s, {counters['stats']['unique_graphs'] - graphs} graphs "
          "(without LoRAs and with the LoRA slot on)")
    loras = build_tiny_family(default_root())["loras"]
    manager.load_lora(str(loras / "tiny-style-lora"), "a")
    manager.load_lora(str(loras / "tiny-kohya-style.safetensors"), "b")
    rows = []
    print(f"LoRA switches on a compiled transformer · profile {args.profile} · {args.size}x{args.size}, "
          f"{args.steps} steps")
    print(f"{'mode':<16}{'loras':<16}{'seconds':>10}{'new graphs':>12}")
    for mode, loras_field in SEQUENCE:
        raw = {"prompt": "a lighthouse", "image_size": "custom", "width": args.size, "height": args.size,
               "num_inference_steps": args.steps, "seed": 1, "loras": loras_field}
        if mode == "control":
            raw["image"] = str(REPO / "presets" / "examples" / "lake_sunset.jpg")
        request = playground.parse(mode, {**raw, "enable_safety_checker": False})
        graphs = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        playground.execute(request)
        row = {"mode": mode, "loras": loras_field, "seconds": time.perf_counter() - started,
               "new_graphs": counters["stats"]["unique_graphs"] - graphs}
        rows.append(row)
        print(f"{mode:<16}{repr(loras_field):<16}{row['seconds']:>10.2f}{row['new_graphs']:>12}")
    slot = manager.status()["adapters"].get("slot")
    if slot:
        print(f"LoRA slot of rank {slot['rank']}: {slot['swaps']} hot-swaps, "
              f"{1000 * slot['swap_seconds'] / max(slot['swaps'], 1):.1f} ms each on average")
    return rows


if __name__ == "__main__":
    main()
