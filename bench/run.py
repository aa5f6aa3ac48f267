"""Benchmark: what the playground costs on top of the pipelines, on the offline demo family.

    python -m bench.run [--repeats N] [--size 1024] [--steps 28] [--json bench/results.json]

Prints a table and writes JSON. Rows:
- start-up: building the manager and loading what text-to-image needs;
- per mode: a steady-state request, the first request after switching from another mode, and
  their ratio (the cost of a mode switch; nothing is reloaded, so it should be about 1; a
  switch into or out of control also puts a control LoRA on the transformer or takes it off);
- API overhead: the same request through gradio_client against the served app, over a
  direct `Playground.execute` call;
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


def raw_request(mode: str, size: int, steps: int) -> dict:
    raw = {"prompt": "a lighthouse at dusk", "image_size": "custom", "width": size, "height": size,
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


def api_overhead(measured: dict, repeats: int, size: int, steps: int) -> dict:
    """gradio_client against the served app over a direct execute of the same request."""
    from gradio_client import Client

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import running_server

    raw = raw_request("text_to_image", size, steps)
    direct = median_seconds(lambda: measured["playground"].execute(measured["requests"]["text_to_image"]), repeats)
    with running_server([], Path(tempfile.mkdtemp(prefix="bench-api-"))) as (_, _, url):
        client = Client(url, verbose=False)
        client.predict(**raw, api_name="/text_to_image")  # warm up
        through_api = median_seconds(lambda: client.predict(**raw, api_name="/text_to_image"), repeats)
    return {"direct_s": direct, "api_s": through_api, "overhead_s": through_api - direct}


def print_table(result: dict) -> None:
    print(f"FLUX Playground benchmark · {result['date']} · {result['machine']} · "
          f"{result['placement']['device']} {result['placement']['dtype']} · "
          f"{result['size']}x{result['size']}, {result['steps']} steps, median of {result['repeats']}")
    print(f"{'row':<38}{'seconds':>10}{'ratio':>10}")
    print(f"{'start-up (manager + text-to-image)':<38}{result['startup_s']:>10.3f}")
    for mode, row in result["modes"].items():
        print(f"{mode + ' steady':<38}{row['steady_s']:>10.3f}")
        print(f"{mode + ' after a mode switch':<38}{row['after_switch_s']:>10.3f}{row['switch_ratio']:>10.3f}")
    api = result["api"]
    print(f"{'text_to_image direct execute':<38}{api['direct_s']:>10.3f}")
    print(f"{'text_to_image via gradio_client':<38}{api['api_s']:>10.3f}{api['api_s'] / api['direct_s']:>10.3f}")
    print(f"resident bytes {result['resident_bytes']:,} · unique storage bytes {result['unique_resident_bytes']:,} · "
          f"loads {sorted(set(result['load_counts'].values()))}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--json", default=str(REPO / "bench" / "results.json"))
    args = parser.parse_args(argv)
    measured = measure(args.repeats, args.size, args.steps)
    result = {key: value for key, value in measured.items() if key not in ("playground", "requests")}
    result.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {os.cpu_count()} cores",
                  size=args.size, steps=args.steps, repeats=args.repeats,
                  api=api_overhead(measured, args.repeats, args.size, args.steps))
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
