"""The GPU benchmark's code path, on CPU: its FLOP count, and a smoke run with --tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import REPO

from bench.flux_cost import FLUX_TRANSFORMER, image_tokens, transformer_flops


def test_flops_match_torchs_count_and_the_known_total():
    """The pure function against torch's FlopCounterMode on the real architecture (on the meta
    device: no memory, no compute), and FLUX.1-dev at 1024x1024 is about 74 TFLOP per step."""
    from diffusers import FluxTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_TRANSFORMER)
        image, text = 64, 32
        inputs = {"hidden_states": torch.randn(2, image, 64), "encoder_hidden_states": torch.randn(2, text, 4096),
                  "pooled_projections": torch.randn(2, 768), "timestep": torch.ones(2), "guidance": torch.ones(2),
                  "img_ids": torch.zeros(image, 3), "txt_ids": torch.zeros(text, 3)}
        with FlopCounterMode(display=False) as counter:
            model(**inputs)
    assert counter.get_total_flops() == transformer_flops(FLUX_TRANSFORMER, image, text, batch=2)
    assert image_tokens(1024, 1024) == 4096
    assert 74e12 < transformer_flops(FLUX_TRANSFORMER, 4096, 512) < 75e12


def test_gpu_benchmark_tiny_smoke_run(family, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    out = tmp_path / "gpu.json"
    # Inductor's FX graph cache is shared with this test process (content-addressed, so safe):
    # graphs the acceleration tests compiled are not compiled again.
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--restart", "--json", str(out),
                           "--compile-cache", str(tmp_path / "compile")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "s/step" in done.stdout and "cold start" in done.stdout and "n/a" in done.stdout
    result = json.loads(out.read_text())
    assert result["tiny"] and result["matmul_peak_tflops"] is None
    rows = {(row["profile"], row["workload"]): row for row in result["rows"]}
    assert set(rows) == {(p, w) for p in ("none", "regular") for w in ("dev", "kontext", "redux")}
    for row in rows.values():
        assert row["s_per_image"] > 0 and row["s_per_step"] > 0 and row["peak_memory_bytes"] is None
        assert row["speedup_vs_none"] > 0 and row["finite"]
        assert row["max_abs_diff_vs_none"] < 1e-3  # regular is lossless; none is the reference itself
    assert rows[("none", "dev")]["max_abs_diff_vs_none"] == 0
    regular = result["profiles"]["regular"]
    assert set(regular["report"]["applied"]) == {"fuse_qkv", "attention", "compile"}
    assert regular["cold"]["cold_start_s"] >= regular["cold"]["first_image_s"] > 0
    # A restart finds the artifacts this run saved.
    assert result["compile_cache"]["saved"]["artifacts"] > 0
    assert regular["restart"]["artifacts_loaded"] > 0 and regular["restart"]["cold_start_s"] > 0
    assert "restart" not in result["profiles"]["none"]
