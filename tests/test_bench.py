"""The benchmark runs (a smoke run: tiny sizes, one repeat) and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_benchmark_smoke_run_prints_a_table_and_writes_json(family, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench.run", "--repeats", "1", "--size", "256", "--steps", "2",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
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


def test_lora_switches_on_a_compiled_transformer_compile_each_combination_once(family):
    """bench.lora_compile's sequence: a LoRA combination, control switch or weight seen before
    compiles nothing again."""
    done = subprocess.run([sys.executable, "-m", "bench.lora_compile"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("text_to_image", "control"))]
    new_graphs = [int(row[-1]) for row in rows]
    assert len(rows) == 18 and new_graphs[0] > 0
    # Requests 4, 6, 8-10, 12-14, 16, 18 repeat a state seen before (see bench/lora_compile.py).
    assert [new_graphs[i - 1] for i in (4, 6, 8, 9, 10, 12, 13, 14, 16, 18)] == [0] * 10
