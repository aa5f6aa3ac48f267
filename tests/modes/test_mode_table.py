"""The mode table: every mode declared once, and everything else reads the declaration."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

from pipelines.models.components import COMPONENTS, PIPELINES
from pipelines.models.sources import ModelSources
from pipelines.modes.parsing import parse_request
from pipelines.modes.request_types import GenerationRequest
from pipelines.modes.table import MODES
from presets import PRESETS
from ui.endpoints import endpoint_parameters


def test_every_mode_has_a_preset_a_request_type_and_a_route_and_every_preset_a_mode():
    assert list(PRESETS.modes) == list(MODES)
    source_keys = {item.name for item in dataclasses.fields(ModelSources)}
    for name, mode in MODES.items():
        assert mode.name == name
        assert issubclass(mode.request_type, GenerationRequest)
        for route in filter(None, (mode.route, mode.fill_route)):
            assert route.pipelines and all(pipeline in PIPELINES for pipeline in route.pipelines)
            assert set(route.models) <= source_keys
            assert "transformer" in PIPELINES[route.pipelines[-1]][1]  # the generating pipeline is last
        assert set(mode.required) <= set(mode.parameters)
        request_fields = {item.name for item in dataclasses.fields(mode.request_type)}
        # every own parameter is a request field, or an input a request field is made from
        assert set(mode.parameters) - request_fields <= {"mask_image"}
        if mode.variant_field:
            assert mode.variant_field in PRESETS.choices


def test_what_a_mode_prepares_with_is_a_component():
    depth = parse_request("control", {"prompt": "a castle", "image": str(REPO / "presets/examples/lake_sunset.jpg"),
                                      "control_type": "depth"})
    assert MODES["control"].prepare_components(depth) == ("depth_estimator", "depth_processor")
    assert set(MODES["control"].prepare_components(depth)) <= set(COMPONENTS)


def test_the_fill_rule_is_data_of_the_table():
    fill_modes = {name for name, mode in MODES.items() if mode.fill_route}
    assert fill_modes == {"inpaint", "outpaint"}
    for name in fill_modes:
        assert MODES[name].route_for(True).pipelines == ("fill",)
        assert MODES[name].route_for(False).pipelines == ("inpaint",)
        assert not MODES[name].route_for(True).takes_loras


def test_every_mode_has_an_endpoint_and_a_tab_on_the_served_page(client, base_url):
    import requests

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    config = requests.get(f"{base_url}config", timeout=10).json()
    tab_ids = {component["props"].get("id") for component in config["components"] if component["type"] == "tabitem"}
    for name, mode in MODES.items():
        assert [p["parameter_name"] for p in api[f"/{name}"]["parameters"]] == list(endpoint_parameters(mode))
        assert name in tab_ids


def test_a_request_names_the_mode_it_was_parsed_for():
    request = parse_request("text_to_image", {"prompt": "a lighthouse"})
    assert request.mode == "text_to_image"


# A throwaway mode that needs only a declaration and a preset entry: fixed-seed variations,
# image-to-image's request, fields and call under its own name, title and defaults.
VARIATION_PRESET = """
[modes.variation]
title = "Variation"
image_size = "match_input"
defaults = { guidance_scale = 3.5, strength = 0.5, seed = 7 }
labels = { image = "Image to vary" }
"""
VARIATION_SCRIPT = """
import dataclasses, json, sys
from types import MappingProxyType

from pipelines.modes import table

image_to_image = table.MODES["image_to_image"]
variation = dataclasses.replace(image_to_image, name="variation",
                                description="Fixed-seed variations of an image (seed 7 unless given).")
table.MODES = MappingProxyType({**table.MODES, "variation": variation})

import requests
from gradio_client import Client, handle_file
from PIL import Image

sys.path.insert(0, "tests")
from conftest import running_server

with running_server([], __import__("pathlib").Path(sys.argv[1])) as (_, playground, url):
    client = Client(url, verbose=False)
    fast = dict(num_inference_steps=2, live_preview=False, enable_safety_checker=False)
    first = client.predict(image=handle_file("presets/examples/bluebird.jpg"), prompt="a bird", api_name="/variation", **fast)
    again = client.predict(image=handle_file("presets/examples/bluebird.jpg"), prompt="a bird", api_name="/variation", **fast)
    with Image.open(first[0][0]["image"]) as one, Image.open(again[0][0]["image"]) as two:
        same = one.tobytes() == two.tobytes()
        size = one.size
    config = requests.get(url + "config", timeout=10).json()
    tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
    print(json.dumps({"seed": first[1], "same": same, "size": size, "tabs": tabs, "mode": first[2]["mode"],
                      "strength": first[2]["strength"], "models": playground.status()["models"]["variation"]}))
"""


def test_a_new_mode_needs_only_a_declaration_and_a_preset_entry(family, tmp_path):
    parameters = tmp_path / "parameters.toml"
    parameters.write_text((REPO / "presets" / "parameters.toml").read_text() + VARIATION_PRESET)
    script = tmp_path / "variation.py"
    script.write_text(textwrap.dedent(VARIATION_SCRIPT))
    env = {**os.environ, "FLUX_PARAMETERS_FILE": str(parameters), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mode"] == "variation" and result["seed"] == 7 and result["strength"] == 0.5
    assert result["same"]  # a fixed seed: the same image twice
    assert result["size"] == [640, 640]  # match_input: the bird's size
    assert "Variation" in result["tabs"]
    assert result["models"].startswith("FLUX.1-dev")


def test_no_module_but_the_table_lists_the_modes():
    """A file naming every mode is a second table. (A REST module's map of the provider's routes
    onto some modes is a wire shape, not a list of modes.)"""
    names = set(MODES)
    offenders = {}
    for path in [*REPO.glob("pipelines/**/*.py"), *REPO.glob("ui/*.py"), *REPO.glob("rest/*.py"),
                 *REPO.glob("bench/*.py"), REPO / "app.py", *REPO.glob("presets/*.py")]:
        if path.name == "table.py" or path.relative_to(REPO).as_posix() == "pipelines/models/components.py":
            continue  # components.py names its pipelines after the modes that first used them
        text = path.read_text()
        found = {name for name in names if f'"{name}"' in text}
        if found == names:
            offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}


def test_bench_reads_the_table():
    text = (REPO / "bench" / "run.py").read_text()
    assert "from pipelines.modes.table import MODES" in text


def start_with_parameters(parameters: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python app.py --demo` with FLUX_PARAMETERS_FILE, expected to stop at start."""
    env = {**os.environ, "FLUX_PARAMETERS_FILE": str(parameters), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "app.py", "--demo", "--outputs-dir", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_parameter_file_that_cannot_be_read_stops_the_start_naming_it(tmp_path):
    missing = tmp_path / "nowhere.toml"
    done = start_with_parameters(missing, tmp_path)
    assert done.returncode != 0
    assert f"the parameter file {missing} (FLUX_PARAMETERS_FILE) cannot be read" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[modes.text_to_image\n")
    done = start_with_parameters(broken, tmp_path)
    assert done.returncode != 0 and f"the parameter file {broken} (FLUX_PARAMETERS_FILE) cannot be read" in done.stderr


def test_a_mode_without_its_preset_entry_stops_the_start_naming_it(family, tmp_path):
    text = (REPO / "presets" / "parameters.toml").read_text()
    start = text.index("[modes.control]")
    end = text.index("\n[", start + 1)
    parameters = tmp_path / "parameters.toml"
    parameters.write_text(text[:start] + text[end:])
    done = start_with_parameters(parameters, tmp_path)
    assert done.returncode != 0
    assert f"{parameters} has no [modes.control] entry" in done.stderr
