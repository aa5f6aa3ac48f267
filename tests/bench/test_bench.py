"""The benchmark runs (a smoke run: tiny sizes, one repeat) and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_smoke_run_prints_a_table_and_writes_json(family, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--repeats", "1", "--size", "256", "--steps", "2",
                           "--json", str(out), "--serving", "256/2,256/2:off"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after a mode switch" in done.stdout and "via gradio_client" in done.stdout
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"text_to_image", "image_to_image", "kontext_edit", "redux_variation",
                                    "inpaint", "outpaint", "control"}
    assert all(row["steady_s"] > 0 and row["switch_ratio"] > 0 for row in result["modes"].values())
    # Every component loaded once, and no weight stored twice.
    assert set(result["load_counts"].values()) == {1}
    assert result["resident_bytes"] == result["unique_resident_bytes"] > 0
    assert result["api"]["api_s"] > 0 and result["startup_s"] > 0
    # The serving rows: the served request against a plain diffusers call, the same pixels.
    cases = result["api"]["cases"]
    assert set(cases) == {"256/2", "256/2:off"} and not cases["256/2:off"]["live_preview"]
    assert all(row["pixels_equal"] and row["direct_s"] > 0 and row["ratio"] > 0 for row in cases.values())
    # Beside them Gradio's floor (an endpoint of the same shape doing no work), and what is left.
    assert all(0 < row["floor_s"] < row["api_s"] for row in cases.values())
    assert all(abs(row["own_s"] - (row["api_s"] - row["direct_s"] - row["floor_s"])) < 1e-9 for row in cases.values())
    assert "gradio floor (no work)" in done.stdout


def test_lora_switches_on_a_compiled_transformer_never_compile(family):
    """bench.lora_compile's sequence after the start-up warm-up: the LoRAs share one hot-swapped
    adapter, compiled switched on and off at start, so no text-to-image request compiles, not
    for a new LoRA, combination or weight; only the first request in each control state does."""
    done = subprocess.run([sys.executable, "-m", "bench.lora_compile"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 graphs (without LoRAs and with the LoRA slot on)" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("text_to_image", "control"))]
    assert len(rows) == 18
    compiled = [number for number, row in enumerate(rows, 1) if int(row[-1]) > 0]
    assert compiled == [11, 15]  # control's LoRA, then control's LoRA with the slot on
