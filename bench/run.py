"""Benchmark: what the playground costs on top of the pipelines, on the offline demo family.

    python -m bench.run [--repeats N] [--size 1024] [--steps 28] [--json bench/results.json]

Prints a table and writes JSON. Rows:
- start-up: building the manager and loading what text-to-image needs;
- per mode: a steady-state request, the first request after switching from another mode, and
  their ratio (the cost of a mode switch; nothing is reloaded, so it should be about 1; a
  switch into or out of control also puts a control LoRA on the transformer or takes it off);
- serving overhead: a text-to-image request through gradio_client against `python app.py
  --demo` in its own process (the defaults: previews, safety checker, PNG), over a plain
  diffusers FluxPipeline call on the same weights with the same arguments, per `--serving`
  case (1024²/28 steps, the same without previews, 512²/14 steps), interleaved; the served
  image equals the plain one. Beside it, Gradio's floor: the same request to an endpoint of
  the same shape that does no work (bench/gradio_floor.py), and what is left, the
  playground's own cost (served − plain − floor);
- resident bytes of all loaded modules against the bytes of their distinct storages.

Every timing is the median of `--repeats` runs, measured in the same process, so ratios hold
on a noisy machine. The GPU rows (full-size random-weight FLUX, acceleration profiles) are
not part of this script yet: it reports the device it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXAMPLE = str(REPO / "presets" / "examples" / "bluebird.jpg")
PROMPT = "a lighthouse at dusk"


def raw_request(mode: str, size: int, steps: int) -> dict:
    raw = {"prompt": PROMPT, "image_size": "custom", "width": size, "height": size,
           "num_inference_steps": steps, "seed": 1, "live_preview": False, "enable_safety_checker": False}
    if mode != "text_to_image":
        raw["image"] = EXAMPLE
    if mode == "inpaint":
        raw["mask_image"] = centre_mask(size)
    if mode == "outpaint":  # its size is the canvas: the input fitted to `size`, plus a quarter
        del raw["image_size"], raw["width"], raw["height"]
        raw.update(image=Image.open(EXAMPLE).convert("RGB").resize((size, size)), expand_right=size // 64 * 16)
    return raw


def centre_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return mask


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_seconds(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def measure(repeats: int, size: int, steps: int) -> dict:
    from pipelines.models.sources import pick_placement
    from pipelines.models.startup import demo_manager
    from pipelines.modes.parsing import parse_request
    from pipelines.modes.table import MODES
    from pipelines.outputs.results import ResultStore
    from pipelines.service import Playground

    placement = pick_placement()
    started = time.perf_counter()
    manager = demo_manager(placement)
    startup_s = time.perf_counter() - started
    playground = Playground(manager, ResultStore(Path(tempfile.mkdtemp(prefix="bench-"))))
    modes = tuple(MODES)
    requests = {mode: parse_request(mode, raw_request(mode, size, steps)) for mode in modes}
    for mode in modes:  # every component loaded once, before anything is timed
        playground.execute(requests[mode])

    rows = {}
    for index, mode in enumerate(modes):
        other = requests[modes[(index + 1) % len(modes)]]

        def after_switch():
            playground.execute(other)
            return timed(lambda: playground.execute(requests[mode]))

        steady = median_seconds(lambda: playground.execute(requests[mode]), repeats)
        switched = statistics.median(after_switch() for _ in range(repeats))
        rows[mode] = {"steady_s": steady, "after_switch_s": switched, "switch_ratio": switched / steady}
    status = manager.status()
    loads = {name: c["load_count"] for name, c in status["components"].items()}
    return {"placement": {"device": str(placement.device), "dtype": str(placement.dtype)},
            "startup_s": startup_s, "modes": rows, "load_counts": loads,
            "resident_bytes": status["resident_bytes"], "unique_resident_bytes": status["unique_resident_bytes"],
            "playground": playground, "requests": requests}


# Serving overhead: the served request takes every parameter's default but size, steps and
# live_preview (safety checker on, PNG), as a user's would.
def plain_diffusers_call(pipe, size: int, steps: int):
    """What the served text-to-image request runs, as a plain diffusers call: the same weights,
    arguments and CPU generator."""
    import torch

    from presets import PRESETS

    return pipe(prompt=PROMPT, width=size, height=size, num_inference_steps=steps,
                guidance_scale=PRESETS.default("guidance_scale", "text_to_image"), negative_prompt=None,
                true_cfg_scale=1.0, generator=torch.Generator("cpu").manual_seed(1)).images[0]


def serving_overhead(cases: dict, repeats: int) -> dict:
    """A text-to-image request through gradio_client against `python app.py --demo` in its own
    process, over a plain diffusers FluxPipeline call on the same demo weights with the same
    arguments, and over Gradio's floor: the same request to an endpoint of the same shape that
    does no work (bench/gradio_floor.py, also its own process). Interleaved, medians of
    `repeats`; the served image checked against the plain one pixel for pixel."""
    import numpy as np
    from diffusers import FluxPipeline
    from gradio_client import Client

    from bench.launched import free_port, launched
    from pipelines.demo_family.family import build_tiny_family, default_root
    from pipelines.models.sources import pick_placement

    pipe = FluxPipeline.from_pretrained(build_tiny_family(default_root())["dev"],
                                        torch_dtype=pick_placement().dtype).to(pick_placement().device)
    pipe.set_progress_bar_config(disable=True)
    outputs = Path(tempfile.mkdtemp(prefix="bench-api-"))
    app_port, floor_port = free_port(), free_port()
    app_command = ["app.py", "--demo", "--port", str(app_port), "--outputs-dir", str(outputs),
                   "--lora-dir", str(outputs / "loras")]
    rows = {}
    with launched(app_command, app_port) as app_url, \
            launched(["-m", "bench.gradio_floor", "--port", str(floor_port)], floor_port) as floor_url:
        app, floor = Client(app_url, verbose=False), Client(floor_url, verbose=False)
        for name, (size, steps, preview) in cases.items():
            def served():
                return app.predict(prompt=PROMPT, image_size="custom", width=size, height=size,
                                   num_inference_steps=steps, seed=1, live_preview=preview,
                                   api_name="/text_to_image")

            def floor_request():
                return floor.predict(size, size, steps, preview, api_name="/text_to_image")

            floor_request()  # warm-up: its files are made on first use
            with Image.open(served()[0][0]["image"]) as image:  # warm-up, and the same pixels
                same = np.array_equal(np.asarray(image.convert("RGB")), np.asarray(plain_diffusers_call(pipe, size, steps)))
            times = {"direct": [], "api": [], "floor": []}
            calls = {"direct": lambda: plain_diffusers_call(pipe, size, steps), "api": served, "floor": floor_request}
            for repeat in range(repeats):  # interleaved, rotating which goes first
                order = list(calls)[repeat % 3:] + list(calls)[:repeat % 3]
                for key in order:
                    times[key].append(timed(calls[key]))
            row = {"size": size, "steps": steps, "live_preview": preview, "pixels_equal": same,
                   **{f"{key}_s": statistics.median(values) for key, values in times.items()}}
            row.update(ratio=row["api_s"] / row["direct_s"], fixed_s=row["api_s"] - row["direct_s"],
                       own_s=row["api_s"] - row["direct_s"] - row["floor_s"])
            rows[name] = row
    first = next(iter(rows.values()))
    return {"cases": rows, "direct_s": first["direct_s"], "api_s": first["api_s"]}


def parse_cases(text: str) -> dict:
    """ "1024/28,512/14:off" as serving cases (":off": live_preview off)."""
    cases = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        sides, _, preview = item.partition(":")
        size, steps = (int(number) for number in sides.split("/"))
        cases[item] = (size, steps, preview != "off")
    return cases


def print_table(result: dict) -> None:
    print(f"FLUX Playground benchmark · {result['date']} · {result['machine']} · "
          f"{result['placement']['device']} {result['placement']['dtype']} · "
          f"{result['size']}x{result['size']}, {result['steps']} steps, median of {result['repeats']}")
    print(f"{'row':<38}{'seconds':>10}{'ratio':>10}")
    print(f"{'start-up (manager + text-to-image)':<38}{result['startup_s']:>10.3f}")
    for mode, row in result["modes"].items():
        print(f"{mode + ' steady':<38}{row['steady_s']:>10.3f}")
        print(f"{mode + ' after a mode switch':<38}{row['after_switch_s']:>10.3f}{row['switch_ratio']:>10.3f}")
    for name, row in result["api"]["cases"].items():
        label = f"{name}{'' if row['live_preview'] else ' (no preview)'}"
        print(f"{'plain diffusers ' + label:<38}{row['direct_s']:>10.3f}")
        print(f"{'via gradio_client ' + label:<38}{row['api_s']:>10.3f}{row['ratio']:>10.3f}"
              f"  fixed {row['fixed_s']:+.3f} s{'' if row['pixels_equal'] else '  PIXELS DIFFER'}")
        print(f"{'gradio floor (no work) ' + label:<38}{row['floor_s']:>10.3f}"
              f"{'':>10}  playground's own {row['own_s']:+.3f} s")
    print(f"resident bytes {result['resident_bytes']:,} · unique storage bytes {result['unique_resident_bytes']:,} · "
          f"loads {sorted(set(result['load_counts'].values()))}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--json", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--serving", default="1024/28,1024/28:off,512/14",
                        help='serving overhead cases, "SIZE/STEPS[:off]" (":off": live_preview off)')
    args = parser.parse_args(argv)
    measured = measure(args.repeats, args.size, args.steps)
    result = {key: value for key, value in measured.items() if key not in ("playground", "requests")}
    result.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {os.cpu_count()} cores",
                  size=args.size, steps=args.steps, repeats=args.repeats,
                  api=serving_overhead(parse_cases(args.serving), max(args.repeats, 1)))
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
