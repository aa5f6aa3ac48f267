"""FLUX Playground: a Gradio web playground and API server for the FLUX.1 [dev] family.

`python app.py` serves FLUX.1-dev, Kontext-dev, Redux-dev and the control LoRAs (and Fill-dev
when configured); `python app.py --demo` serves a tiny random-weight family offline. This file
starts the server; the page is declared in `ui/`, requests, models and validation live in
`pipelines/` and `presets/`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI

from pipelines.fetch import FetchPolicy
from pipelines.jobs.runner import JobRunner
from pipelines.jobs.store import JobStore
from pipelines.loras.sources import LoraSourcePolicy
from pipelines.models.quantization import QUANTIZE_CHOICES
from pipelines.models.startup import (
    demo_lora_folders,
    limit_malloc_arenas,
    start_manager,
)
from pipelines.modes.table import MODES
from pipelines.outputs.results import ResultStore
from pipelines.outputs.safety import SafetyChecker
from pipelines.service import Playground, Runner
from presets import PARAMETERS_FILE, PRESETS
from rest import add_rest_api
from rest.arrival import ArrivalStamp
from rest.common import RestSettings
from ui import build_ui
from ui.gradio_queue import poll_queue_calmly
from ui.mcp import send_galleries_as_images

log = logging.getLogger("flux_playground")
PAGE_CSS = str(Path(__file__).resolve().parent / "ui" / "page.css")


# --- start-up ---------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", default=env("FLUX_DEMO") == "1",
                        help="serve the tiny offline demo family (env FLUX_DEMO=1)")
    parser.add_argument("--no-demo-fallback", action="store_true",
                        default=env("FLUX_NO_DEMO_FALLBACK") == "1",
                        help="exit instead of falling back to the demo model when the real one cannot load")
    parser.add_argument("--dev-model", help="hub id or folder of FLUX.1-dev, or a single transformer file: BFL's "
                        ".safetensors or a .gguf (env FLUX_DEV_MODEL)")
    parser.add_argument("--kontext-model", help="hub id or folder of FLUX.1-Kontext-dev, or a single transformer "
                        ".safetensors/.gguf file (env FLUX_KONTEXT_MODEL)")
    parser.add_argument("--base-model", default=env("FLUX_BASE_MODEL"),
                        help="diffusers-layout folder or hub id giving what a single-file --dev-model lacks: VAE, "
                             "text encoders, tokenizers, scheduler, transformer config (env FLUX_BASE_MODEL; "
                             "black-forest-labs/FLUX.1-dev)")
    parser.add_argument("--quantize", default=env("FLUX_QUANTIZE", "none"), choices=QUANTIZE_CHOICES,
                        help="storage of the FLUX transformers and T5: none (the dtype), int8 (torchao weight-only), "
                             "fp8 (torchao float8, CUDA >= 8.9; no LoRAs), nf4 (bitsandbytes 4-bit, CUDA), auto "
                             "(for now none); a type that cannot run here falls back to none (env FLUX_QUANTIZE)")
    parser.add_argument("--redux-model", help="hub id or folder of FLUX.1-Redux-dev (env FLUX_REDUX_MODEL)")
    parser.add_argument("--fill-model", default=env("FLUX_FILL_MODEL"), help="hub id or folder of FLUX.1-Fill-dev (or a single transformer file): inpainting and outpainting use it "
                        "instead of FLUX.1-dev (another 12B transformer; env FLUX_FILL_MODEL). With --demo, any "
                        "value selects the demo family's Fill model")
    parser.add_argument("--canny-lora", help="hub id, folder or file of FLUX.1-Canny-dev-lora (env FLUX_CANNY_LORA)")
    parser.add_argument("--depth-lora", help="hub id, folder or file of FLUX.1-Depth-dev-lora (env FLUX_DEPTH_LORA)")
    parser.add_argument("--depth-model", help="hub id or folder of the depth estimator for depth control "
                        "(env FLUX_DEPTH_MODEL; depth-anything/Depth-Anything-V2-Small-hf)")
    parser.add_argument("--lora-dir", default=env("FLUX_LORA_DIR", "loras"),
                        help="folder of LoRA files users may load by name; URL downloads are kept here too "
                             "(env FLUX_LORA_DIR)")
    parser.add_argument("--max-loras", type=int, default=int(env("FLUX_MAX_LORAS", "8")),
                        help="LoRAs that may be loaded at once (env FLUX_MAX_LORAS)")
    parser.add_argument("--max-lora-mb", type=float, default=float(env("FLUX_MAX_LORA_MB", "2048")),
                        help="largest LoRA file fetched from a URL (env FLUX_MAX_LORA_MB)")
    parser.add_argument("--lora-time-limit", type=float, default=float(env("FLUX_LORA_TIME_LIMIT", "300")),
                        help="seconds a LoRA's download, from a URL or the Hugging Face Hub, may take before it "
                             "is stopped (env FLUX_LORA_TIME_LIMIT)")
    parser.add_argument("--lora-rank", type=positive_int, default=env("FLUX_LORA_RANK", str(PRESETS.loras.compiled_rank)),
                        help="with a compiled transformer (acceleration regular or high), the rank of the one "
                             "adapter a request's LoRAs are hot-swapped into: their ranks may add up to this "
                             "(env FLUX_LORA_RANK)")
    parser.add_argument("--acceleration", default=env("FLUX_ACCELERATION", "none"), choices=("none", "regular", "high"),
                        help="none: bf16 eager, the plain diffusers result; regular: regional torch.compile, the best "
                             "attention backend, fused QKV (lossless); high: regular + float8 (CUDA >= 8.9) + step "
                             "caching by default (env FLUX_ACCELERATION)")
    parser.add_argument("--residency", default=env("FLUX_RESIDENCY", "auto"),
                        choices=("auto", "resident", "swap", "offload"),
                        help="where the models live: all on the accelerator, one FLUX transformer at a time (the "
                             "others in pinned CPU memory), or group offloading; auto chooses from free memory "
                             "(env FLUX_RESIDENCY)")
    parser.add_argument("--compile-cache", default=env("FLUX_COMPILE_CACHE"),
                        help="folder for compiled artifacts, so a restart does not compile again "
                             "(env FLUX_COMPILE_CACHE; ~/.cache/flux-playground/compile)")
    parser.add_argument("--warm-up", default=env("FLUX_WARM_UP", "auto"),
                        help="sizes to compile at start with a compiling profile: auto (fal's presets), off, or "
                             "WxH[,WxH…] (env FLUX_WARM_UP)")
    parser.add_argument("--safety-model", help="hub id or folder of the NSFW classifier run on outputs "
                        "(env FLUX_SAFETY_MODEL; Falconsai/nsfw_image_detection)")
    parser.add_argument("--safety-threshold", type=float, default=float(env("FLUX_SAFETY_THRESHOLD", "0.85")),
                        help="flag an image when its nsfw probability reaches this (env FLUX_SAFETY_THRESHOLD)")
    parser.add_argument("--device", default=env("FLUX_DEVICE", "auto"), help="auto, cuda, cuda:1, cpu… (env FLUX_DEVICE)")
    parser.add_argument("--dtype", default=env("FLUX_DTYPE", "auto"),
                        help="auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32 (env FLUX_DTYPE)")
    parser.add_argument("--outputs-dir", default=env("FLUX_OUTPUTS_DIR", "outputs"),
                        help="where results are written (env FLUX_OUTPUTS_DIR)")
    parser.add_argument("--retention-hours", type=float, default=float(env("FLUX_RETENTION_HOURS", "168")),
                        help="results are deleted after this many hours (env FLUX_RETENTION_HOURS; 7 days)")
    parser.add_argument("--public-url", default=env("FLUX_PUBLIC_URL"),
                        help="base of result URLs in REST responses, e.g. behind a proxy (env FLUX_PUBLIC_URL)")
    parser.add_argument("--allow-private-urls", action="store_true", default=env("FLUX_ALLOW_PRIVATE_URLS") == "1",
                        help="let image URLs point at private, loopback and link-local addresses "
                             "(env FLUX_ALLOW_PRIVATE_URLS=1)")
    parser.add_argument("--max-queue", type=int, default=int(env("FLUX_MAX_QUEUE", "16")),
                        help="requests that may wait for the accelerator; more are told the server is busy "
                             "(env FLUX_MAX_QUEUE)")
    parser.add_argument("--time-limit", type=float, default=float(env("FLUX_TIME_LIMIT", "600")),
                        help="seconds a request may run before it is stopped; 0 for none (env FLUX_TIME_LIMIT)")
    parser.add_argument("--max-upload-mb", type=float, default=float(env("FLUX_MAX_UPLOAD_MB", "20")),
                        help="largest input image accepted, uploaded or fetched (env FLUX_MAX_UPLOAD_MB)")
    parser.add_argument("--auth", default=env("FLUX_AUTH"),
                        help="require a login for the page: user:password[,user:password…] (env FLUX_AUTH)")
    parser.add_argument("--api-key", default=env("FLUX_API_KEY"),
                        help="require this key on the REST routes (env FLUX_API_KEY)")
    parser.add_argument("--monitoring", action="store_true", default=env("FLUX_MONITORING") == "1",
                        help="enable Gradio's monitoring dashboard (env FLUX_MONITORING=1)")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")),
                        help="port to listen on (env GRADIO_SERVER_PORT)")
    return parser.parse_args(argv)


def logins(auth: str | None) -> list[tuple[str, str]] | None:
    """"user:password,user2:password2" as Gradio's list of (user, password)."""
    if not auth:
        return None
    pairs = [entry.split(":", 1) for entry in auth.split(",") if entry.strip()]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise SystemExit("--auth must be user:password[,user:password...]")
    return [(user.strip(), password) for user, password in pairs]


def safety_checker(args: argparse.Namespace, manager) -> SafetyChecker:
    """The safety checker on the manager's device, from its model source (the workers' too)."""
    return SafetyChecker(manager.sources.safety, manager.placement.device, args.safety_threshold,
                         local_files_only=manager.local_files_only)


def create_server(args: argparse.Namespace, runner: Runner | None = None) -> tuple[FastAPI, Playground]:
    """One process, one manager: the REST APIs, the Gradio page and API, and the MCP server
    (`/gradio_api/mcp/`) on one FastAPI app. `runner`: where generation runs when not here
    (deploy/serve_app.py's Ray Serve workers)."""
    missing = [name for name in MODES if name not in PRESETS.modes]
    if missing:  # a mode declared in the table needs its entry in the parameter file
        raise SystemExit(f"FLUX Playground: {PARAMETERS_FILE} has no [modes.{missing[0]}] entry; every mode of "
                         f"pipelines/modes/table.py needs one (missing: {', '.join(missing)})")
    # With a runner, the models are loaded where it generates; here they are only described.
    manager, demo_reason, memory_plan = start_manager(args, load=runner is None)
    store = ResultStore(Path(args.outputs_dir), retention_seconds=args.retention_hours * 3600)
    store.start_sweeper()
    safety = safety_checker(args, manager)
    lora_sources = LoraSourcePolicy(
        folders=(Path(args.lora_dir), *demo_lora_folders(manager)),
        fetch=FetchPolicy(allow_private=args.allow_private_urls, max_bytes=int(args.max_lora_mb * 1024 * 1024),
                          timeout_seconds=args.lora_time_limit))
    playground = Playground(manager, store, demo_reason, safety, max_waiting=args.max_queue,
                            time_limit_seconds=args.time_limit, lora_sources=lora_sources, memory_plan=memory_plan,
                            runner=runner)
    app = FastAPI(title="FLUX Playground", description=__doc__, docs_url="/docs", redoc_url=None)
    app.add_middleware(ArrivalStamp)
    max_bytes = int(args.max_upload_mb * 1024 * 1024)
    settings = RestSettings(fetch=FetchPolicy(allow_private=args.allow_private_urls, max_bytes=max_bytes),
                            public_url=args.public_url, api_key=args.api_key)
    jobs = JobRunner(playground, JobStore(store.folder))
    add_rest_api(app, playground, settings, jobs)  # before Gradio takes `/`
    app.state.rest_settings = settings
    demo = build_ui(playground)
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    poll_queue_calmly(demo)
    jobs.recover()  # what the last run left queued or running, ahead of anything new
    jobs.start_sweeper(store.retention_seconds)
    # Results are served by id; the history index (every prompt) is not served at all.
    app = gr.mount_gradio_app(app, demo, path="/", allowed_paths=[str(store.folder)],
                              blocked_paths=[str(store.index_path)], auth=logins(args.auth),
                              max_file_size=max_bytes, enable_monitoring=args.monitoring, css_paths=[PAGE_CSS],
                              mcp_server=True)
    send_galleries_as_images(demo)
    return app, playground


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    limit_malloc_arenas()
    app, _ = create_server(args)
    log.info("FLUX Playground on http://%s:%d/ (REST API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
