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


def test_lora_switches_on_a_compiled_transformer_never_compile(family):
    """bench.lora_compile's sequence: the LoRAs share one hot-swapped adapter, so only a new
    adapter state (none, the slot, control, control with the slot) compiles; switching LoRAs,
    combinations or weights never does."""
    done = subprocess.run([sys.executable, "-m", "bench.lora_compile"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("text_to_image", "control"))]
    assert len(rows) == 18
    compiled = [number for number, row in enumerate(rows, 1) if int(row[-1]) > 0]
    # Requests 1, 2, 11 and 15 are the first in each adapter state (see bench/lora_compile.py).
    assert compiled == [1, 2, 11, 15]
