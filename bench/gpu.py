"""GPU benchmark: FLUX.1 [dev], Kontext and Redux at full size, per acceleration profile.

    python -m bench.gpu [--size 1024] [--steps 28] [--profiles none,regular,high]
                        [--rows dev:1,dev:4,kontext:1,redux:1] [--repeats 2] [--json FILE]
    python -m bench.gpu --tiny    # CPU smoke run on the demo family: 256x256, 2 steps, none + regular

What runs: the real FLUX transformer architecture (19 double + 38 single blocks, 3072 wide,
11.9B parameters) and the real VAE, both with random weights built on the GPU (no download).
The text encoders are left out: they run once per prompt, not per step, so the pipelines get
precomputed random embeddings of T5's and CLIP's shapes. Kontext is the same transformer
through FluxKontextPipeline (its config equals dev's; the input image doubles the image
tokens). Redux is dev with SigLIP's 729 image tokens appended to T5's 512 (SigLIP's own cost
is small and left out).

Per profile: cold start (the transformer saved once to local safetensors, loaded with
from_pretrained, the profile applied, the first image, compilation included) and, with
--restart, the same in a new process with the compile cache on disk; then per row seconds
per image and per step, speed-up over `none` (the plain diffusers pipeline, in this process),
achieved TFLOP/s and their share of the bf16 matmul peak measured here, peak memory, and how
far the images are from none's. Random weights make the caching rows' speed unrepresentative:
how often First Block Cache skips depends on how trained weights change from step to step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.flux_cost import (
    SIGLIP_TOKENS,
    T5_TOKENS,
    image_tokens,
    matmul_peak_tflops,
    random_transformer,
    random_vae,
    transformer_flops,
)
from pipelines.models.acceleration import (
    apply_profile,
    request_cache,
    save_compile_cache,
    setup_compile_cache,
)
from presets.acceleration import ACCELERATION

WORKLOADS = ("dev", "kontext", "redux")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the demo family on this machine (CI smoke run)")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--profiles")
    parser.add_argument("--rows", help="workload:batch pairs, e.g. dev:1,dev:4,kontext:1,redux:1")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--json")
    parser.add_argument("--weights", help="folder for the random full-size weights (default: a temporary one)")
    parser.add_argument("--compile-cache", help="compile cache folder (default: FLUX_COMPILE_CACHE, else the TOML's)")
    parser.add_argument("--restart", action=argparse.BooleanOptionalAction, default=None,
                        help="measure a restart with the compile cache on disk (default: on, off with --tiny)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a profile: the restart measurement's own process
    args = parser.parse_args(argv)
    tiny = args.tiny
    defaults = {"size": 256 if tiny else 1024, "steps": 2 if tiny else 28, "repeats": 1 if tiny else 2,
                "profiles": "none,regular" if tiny else "none,regular,high",
                "rows": "dev:1,kontext:1,redux:1" if tiny else "dev:1,dev:4,kontext:1,redux:1",
                "json": str(REPO / "bench" / ("gpu-results-tiny.json" if tiny else "gpu-results.json")),
                "restart": not tiny}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.profiles = [ACCELERATION.profile(name).name for name in args.profiles.split(",")]
    args.rows = [(name, int(batch)) for name, batch in (row.split(":") for row in args.rows.split(","))]
    if any(name not in WORKLOADS for name, _ in args.rows):
        parser.error(f"--rows: workloads are {', '.join(WORKLOADS)}")
    return args


# --- models -----------------------------------------------------------------------------------

def placement(tiny: bool) -> tuple[torch.device, torch.dtype]:
    """bf16 on CUDA; float32 on CPU, as the server places models (bf16 matmuls are emulated there)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if not tiny:
        raise SystemExit("bench.gpu needs a CUDA GPU; use --tiny for the CPU smoke run")
    return torch.device("cpu"), torch.float32


def weights_folder(args, device, dtype) -> Path:
    """The transformer's folder: the demo family's, or random full-size weights saved once."""
    if args.tiny:
        from pipelines.demo_family.family import build_tiny_family

        return build_tiny_family()["dev"] / "transformer"
    folder = Path(args.weights) / "transformer"
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        random_transformer(device, dtype).save_pretrained(folder)
        print(f"random weights saved to {folder} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return folder


def load_transformer(folder: Path, device, dtype):
    """As the manager loads it: from_pretrained, then onto the device. Returns it and the seconds."""
    from diffusers import FluxTransformer2DModel

    started = time.perf_counter()
    transformer = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    transformer = transformer.to(device).eval().requires_grad_(False)
    synchronize(device)
    return transformer, time.perf_counter() - started


def shared_parts(args, device, dtype) -> dict:
    """The VAE and the scheduler: the demo family's, or the real VAE architecture at random."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from pipelines.demo_family.base_models import SCHEDULER_CONFIG

    if args.tiny:
        from pipelines.demo_family.family import build_tiny_family

        vae = AutoencoderKL.from_pretrained(build_tiny_family()["dev"] / "vae", torch_dtype=dtype).to(device)
    else:
        vae = random_vae(device, dtype)
    return {"vae": vae.eval().requires_grad_(False), "scheduler": FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)}


def pipelines_for(transformer, parts: dict) -> dict:
    """The pipelines of the workloads, sharing the transformer and the VAE; no text encoders."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    none = {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None}
    dev = FluxPipeline(transformer=transformer, **parts, **none)
    kontext = FluxKontextPipeline(transformer=transformer, **parts, **none)
    for pipe in (dev, kontext):
        pipe.set_progress_bar_config(disable=True)
    return {"dev": dev, "kontext": kontext, "redux": dev}


def text_tokens(workload: str) -> int:
    return T5_TOKENS + (SIGLIP_TOKENS if workload == "redux" else 0)


def workload_flops(config: dict, workload: str, size: int, batch: int) -> int:
    """One transformer forward of a workload: Kontext's input image doubles the image tokens."""
    image = image_tokens(size, size) * (2 if workload == "kontext" else 1)
    return transformer_flops(config, image, text_tokens(workload), batch)


def call_arguments(config: dict, workload: str, size: int, steps: int, batch: int, device, dtype) -> dict:
    """Fixed random embeddings (and, for Kontext, a random input image) of the real shapes."""
    from PIL import Image

    generator = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(1, text_tokens(workload), config["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=generator)
    arguments = {"prompt_embeds": embeds.to(device, dtype), "pooled_prompt_embeds": pooled.to(device, dtype),
                 "width": size, "height": size, "num_inference_steps": steps, "guidance_scale": 3.5,
                 "num_images_per_prompt": batch, "output_type": "pt"}
    if workload == "kontext":
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
        arguments.update(image=Image.fromarray(pixels.numpy()), max_area=size * size, _auto_resize=False)
    return arguments


# --- measuring ----------------------------------------------------------------------------------

def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_call(pipe, arguments: dict, device, cache: str, float8: bool) -> dict:
    """One pipeline call: total seconds, seconds per denoising step (between the ends of the first
    and the last step, so the VAE and the prompt handling are left out) and the images."""
    steps = arguments["num_inference_steps"]
    marks = {}

    def clock(_pipe, step, _timestep, tensors):
        if step in (0, steps - 1):
            synchronize(device)
            marks[step] = time.perf_counter()
        return tensors

    started = time.perf_counter()
    with request_cache(pipe, cache, float8=float8):
        images = pipe(**arguments, generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=clock).images
    synchronize(device)
    seconds = time.perf_counter() - started
    per_step = (marks[steps - 1] - marks[0]) / (steps - 1) if steps > 1 else seconds
    return {"seconds": seconds, "step_seconds": per_step, "images": images.float().cpu()}


def finite(images: torch.Tensor) -> bool:
    """Random weights could overflow bf16; a NaN residual would also make First Block Cache skip
    every step (NaN > threshold is false), so such rows say so."""
    return bool(torch.isfinite(images).all())


def peak_memory(device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else None


def reset_peak_memory(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def prepare_profile(name: str, folder: Path, parts: dict, device, dtype) -> tuple[dict, dict, dict]:
    """Load the transformer and apply the profile: (pipelines, report, cold-start timings).
    `none` is the plain diffusers pipeline: apply_profile is not even called."""
    transformer, load_s = load_transformer(folder, device, dtype)
    started = time.perf_counter()
    if name == "none":
        report = {"profile": "none", "applied": {}, "skipped": {}, "float8": False, "cache_default": "off"}
    else:
        report = apply_profile(transformer, name, device, loras=False)  # the bench loads no LoRAs
    return pipelines_for(transformer, parts), report, {"load_s": load_s, "apply_s": time.perf_counter() - started}


def run_profile(name: str, args, folder: Path, parts: dict, device, dtype, reference: dict) -> tuple[dict, list]:
    pipes, report, cold = prepare_profile(name, folder, parts, device, dtype)
    config = dict(pipes["dev"].transformer.config)
    cache = report["cache_default"]
    rows = []
    for index, (workload, batch) in enumerate(args.rows):
        arguments = call_arguments(config, workload, args.size, args.steps, batch, device, dtype)
        pipe = pipes[workload]
        first = timed_call(pipe, arguments, device, cache, report["float8"])  # compiles what is new
        if index == 0:
            cold["first_image_s"] = first["seconds"]
            cold["cold_start_s"] = cold["load_s"] + cold["apply_s"] + first["seconds"]
        reset_peak_memory(device)
        runs = [timed_call(pipe, arguments, device, cache, report["float8"]) for _ in range(args.repeats)]
        seconds = statistics.median(run["seconds"] for run in runs)
        step_seconds = statistics.median(run["step_seconds"] for run in runs)
        flops = workload_flops(config, workload, args.size, batch)
        row = {"profile": name, "workload": workload, "batch": batch, "cache": cache,
               "first_call_s": first["seconds"], "s_per_image": seconds / batch, "s_per_step": step_seconds,
               "effective_tflops": flops / step_seconds / 1e12, "peak_memory_bytes": peak_memory(device),
               "finite": finite(runs[0]["images"])}
        key = (workload, batch)
        if name == "none":
            reference[key] = {"images": runs[0]["images"], "s_per_image": row["s_per_image"]}
        if key in reference:
            difference = (runs[0]["images"] - reference[key]["images"]).abs()
            row.update(speedup_vs_none=reference[key]["s_per_image"] / row["s_per_image"],
                       max_abs_diff_vs_none=difference.max().item(), mean_abs_diff_vs_none=difference.mean().item())
        rows.append(row)
    del pipes
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"report": report, "cold": cold}, rows


def restart(args, profile: str) -> dict:
    """The cold start again in a new process, with the compile cache this run left on disk."""
    command = [sys.executable, "-m", "bench.gpu", "--child", profile, "--size", str(args.size), "--steps",
               str(args.steps), "--rows", ",".join(f"{w}:{b}" for w, b in args.rows[:1]), "--repeats", "1",
               "--compile-cache", args.compile_cache] + (["--tiny"] if args.tiny else ["--weights", args.weights])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-800:]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def child(args) -> None:
    device, dtype = placement(args.tiny)
    loaded = setup_compile_cache(args.compile_cache)["loaded"]
    folder, parts = weights_folder(args, device, dtype), shared_parts(args, device, dtype)
    pipes, report, cold = prepare_profile(args.child, folder, parts, device, dtype)
    workload, batch = args.rows[0]
    config = dict(pipes["dev"].transformer.config)
    arguments = call_arguments(config, workload, args.size, args.steps, batch, device, dtype)
    first = timed_call(pipes[workload], arguments, device, report["cache_default"], report["float8"])
    cold.update(first_image_s=first["seconds"], cold_start_s=cold["load_s"] + cold["apply_s"] + first["seconds"],
                artifacts_loaded=loaded["artifacts"])
    print("RESULT " + json.dumps(cold))


# --- report -------------------------------------------------------------------------------------

def environment(device, dtype) -> dict:
    import diffusers

    info = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(device),
            "dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device),
                    compute_capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return info


def _cell(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(result: dict) -> str:
    env, peak = result["environment"], result["matmul_peak_tflops"]
    title = (f"FLUX GPU benchmark · {env['date']} · {env.get('gpu', env['machine'])} · {env['dtype']} · "
             f"{result['size']}x{result['size']}, {result['steps']} steps, median of {result['repeats']}"
             f"{' · TINY demo family' if result['tiny'] else ''}")
    flops = result["flops_per_forward"]["dev"]
    forward = f"{flops / 1e12:.2f} TFLOP" if flops > 1e11 else f"{flops / 1e9:.3f} GFLOP"
    lines = [title, f"bf16 matmul peak measured: {_cell(peak, '.0f')} TFLOP/s · one dev forward: {forward}",
             ("none = the plain diffusers pipeline; x none = its seconds per image over the row's; "
              "max diff = largest pixel difference (0..1) from none's image")]
    header = f"{'profile':<9}{'workload':<9}{'batch':>5}{'s/image':>10}{'s/step':>9}{'x none':>8}" \
             f"{'TFLOP/s':>9}{'% peak':>8}{'peak GB':>9}{'max diff':>10}{'first s':>9}"
    lines += ["", header, "-" * len(header)]
    for row in result["rows"]:
        share = row["effective_tflops"] / peak * 100 if peak else None
        memory = row["peak_memory_bytes"] / 1e9 if row["peak_memory_bytes"] is not None else None
        lines.append(f"{row['profile']:<9}{row['workload']:<9}{row['batch']:>5}{row['s_per_image']:>10.3f}"
                     f"{row['s_per_step']:>9.4f}{_cell(row.get('speedup_vs_none'), '.2f'):>8}"
                     f"{row['effective_tflops']:>9.3g}{_cell(share, '.1f'):>8}{_cell(memory, '.1f'):>9}"
                     f"{_cell(row.get('max_abs_diff_vs_none'), '.4f'):>10}{row['first_call_s']:>9.2f}")
    if not all(row["finite"] for row in result["rows"]):
        lines.append("WARNING: some images are not finite (NaN/inf): their rows' timings of caching mean nothing")
    lines.append("")
    for name, profile in result["profiles"].items():
        cold, report = profile["cold"], profile["report"]
        lines.append(f"{name}: cold start {cold['cold_start_s']:.1f} s (load {cold['load_s']:.1f}, apply "
                     f"{cold['apply_s']:.1f}, first image {cold['first_image_s']:.1f})"
                     + (f" · restart {profile['restart'].get('cold_start_s', float('nan')):.1f} s"
                        if "restart" in profile else ""))
        for step, note in report["applied"].items():
            lines.append(f"    applied {step}: {note}")
        for step, reason in report["skipped"].items():
            lines.append(f"    skipped {step}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    device, dtype = placement(args.tiny)
    temporary = args.weights is None and not args.tiny
    if temporary:
        args.weights = tempfile.mkdtemp(prefix="flux-bench-weights-")
    cache_info = setup_compile_cache(args.compile_cache)
    args.compile_cache = cache_info["dir"]
    peak = matmul_peak_tflops(device) if device.type == "cuda" else None
    folder, parts = weights_folder(args, device, dtype), shared_parts(args, device, dtype)
    config = json.loads((folder / "config.json").read_text())
    result = {"environment": environment(device, dtype), "tiny": args.tiny, "size": args.size, "steps": args.steps,
              "repeats": args.repeats, "matmul_peak_tflops": peak, "compile_cache": cache_info,
              "text_encoders": "left out: precomputed random embeddings of T5's and CLIP's shapes",
              "flops_per_forward": {w: workload_flops(config, w, args.size, 1) for w in WORKLOADS},
              "profiles": {}, "rows": []}
    reference: dict = {}
    for name in args.profiles:
        result["profiles"][name], rows = run_profile(name, args, folder, parts, device, dtype, reference)
        result["rows"] += rows
    result["compile_cache"]["saved"] = save_compile_cache(args.compile_cache)
    if args.restart:
        for name in args.profiles:
            if ACCELERATION.profile(name).compile:
                result["profiles"][name]["restart"] = restart(args, name)
    if temporary:
        shutil.rmtree(args.weights, ignore_errors=True)  # 24 GB of random numbers
    print(format_table(result))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
