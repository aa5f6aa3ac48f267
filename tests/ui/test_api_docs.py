"""The "Use via API" page and `gradio_client`'s `view_api()`: integer types, the ranges and
defaults of presets/, a description of every parameter, and the modes' own examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests
from conftest import FAST, REPO
from gradio_client import handle_file

from pipelines.modes.table import MODES
from presets import EXAMPLES, PRESETS, format_number

GENERIC = ("Hello!!", "bus.png", "numeric value between")  # what Gradio's components say of themselves


def endpoints(client) -> dict:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_numeric_parameters_have_the_type_range_and_default_of_presets(client):
    api = endpoints(client)
    for name, mode in MODES.items():
        variant = mode.variant({}, False)  # the shared app has no Fill model
        numeric = [p for p in api[f"/{name}"]["parameters"] if p["parameter_name"] in PRESETS.fields]
        assert len(numeric) >= 5
        for parameter in numeric:
            field, described = parameter["parameter_name"], parameter["python_type"]["description"]
            spec = PRESETS.field(field, name)
            assert parameter["python_type"]["type"] == {"int": "int", "float": "float"}[spec.kind], (name, field)
            assert parameter["type"]["type"] == {"int": "integer", "float": "number"}[spec.kind]
            assert (parameter["type"].get("minimum"), parameter["type"].get("maximum")) == (spec.min, spec.max)
            assert described.lower().startswith(spec.describe_range()), described
            default = PRESETS.default(field, name, variant)
            if field in ("width", "height"):  # given, they win over image_size; else image_size decides
                assert parameter["parameter_default"] is None
                assert f"default {format_number(default)} with image_size custom." in described
            elif parameter["parameter_default"] is None:  # control's guidance and steps follow control_type
                per_type = ", ".join(f"{format_number(PRESETS.default(field, name, kind))} for {kind}"
                                     for kind in PRESETS.choices[mode.variant_field].values)
                assert f"default by {mode.variant_field}: {per_type}." in described
            else:
                assert parameter["parameter_default"] == default and f"default {format_number(default)}." in described
                assert parameter["example_input"] == default


def test_the_steps_of_text_to_image_read_as_the_page_shows_them(client):
    parameters = endpoints(client)["/text_to_image"]["parameters"]
    steps = next(p for p in parameters if p["parameter_name"] == "num_inference_steps")
    spec = PRESETS.fields["num_inference_steps"]
    assert steps["python_type"] == {
        "type": "int",
        "description": f"An integer from {spec.min} to {spec.max}; default {spec.default}. {spec.info}",
    }


def test_every_endpoint_and_parameter_is_described_in_the_served_info(base_url):
    info = requests.get(f"{base_url}gradio_api/info", timeout=30).json()["named_endpoints"]
    for name, mode in MODES.items():
        endpoint = info[f"/{name}"]
        assert endpoint["description"] == mode.description
        for parameter in endpoint["parameters"]:
            assert parameter["python_type"]["description"], (name, parameter["parameter_name"])
        text = json.dumps(endpoint)
        assert not [generic for generic in GENERIC if generic in text], name
    choices = {p["parameter_name"]: p for p in info["/outpaint"]["parameters"]}
    aspect = PRESETS.choices["aspect_ratio"]
    described = choices["aspect_ratio"]["python_type"]["description"]
    assert f"One of {', '.join(aspect.values)}; default {aspect.default}." in described


def test_the_examples_are_the_modes_own_and_they_run(client):
    api = endpoints(client)
    examples = {name: {p["parameter_name"]: p["example_input"] for p in api[f"/{name}"]["parameters"]}
                for name in MODES}
    assert examples["text_to_image"]["prompt"] == EXAMPLES["text_to_image"][0]["prompt"]
    kontext = EXAMPLES["kontext_edit"][0]
    assert examples["kontext_edit"]["prompt"] == kontext["prompt"]
    assert examples["kontext_edit"]["image"]["path"] == Path(kontext["image"]).relative_to(REPO).as_posix()
    painted = examples["inpaint"]["image"]
    mask = "presets/examples/lake_sunset_mask.png"
    assert painted["layers"][0]["path"] == examples["inpaint"]["mask_image"]["path"] == mask
    # Outpainting's defaults grow no side: the page's call needs a side or an aspect ratio.
    grow = {"outpaint": {"aspect_ratio": PRESETS.choices["aspect_ratio"].values[1]}}
    for name, mode in MODES.items():  # the page's call, with its required values, runs
        required = {field: as_upload(examples[name][field]) for field in mode.required}
        size = FAST if mode.sized else {"num_inference_steps": FAST["num_inference_steps"]}
        result = client.predict(**required, **size, **grow.get(name, {}), api_name=f"/{name}")
        assert result[2]["mode"] == name


def as_upload(value):
    """An example's shipped files, uploaded from the repository wherever the tests run."""
    if isinstance(value, dict) and "path" in value:
        return handle_file(REPO / value["path"])
    if isinstance(value, dict):
        return {key: as_upload(part) for key, part in value.items()}
    if isinstance(value, list):
        return [as_upload(part) for part in value]
    return value


def test_the_api_page_shows_the_examples_types_and_ranges(page):
    page.get_by_role("button", name=re.compile("Use via API")).click()
    page.get_by_text("Python", exact=True).first.click()  # the page opens on its MCP tab
    page.get_by_text("API name: /control").first.wait_for()
    text = page.inner_text("body")
    assert not [generic for generic in GENERIC if generic in text]
    assert f'prompt="{EXAMPLES["text_to_image"][0]["prompt"]}"' in text
    assert "image=handle_file('presets/examples/bluebird.jpg')" in text
    spec = PRESETS.fields["num_inference_steps"]
    assert re.search(rf"num_inference_steps int\s+Default:\s*{spec.default}\b", text)
    assert f"An integer from {spec.min} to {spec.max}; default {spec.default}." in text
