"""Switching modes never reloads, copies or re-types a weight; `/status` proves it."""

from __future__ import annotations

from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, FAST, call
from gradio_client import handle_file

REQUESTS = [
    ("/text_to_image", {"prompt": "a fox"}),
    ("/image_to_image", {"image": EXAMPLE_LAKE, "prompt": "a fox"}),
    ("/kontext_edit", {"image": EXAMPLE_BIRD, "prompt": "a fox"}),
    ("/redux_variation", {"image": EXAMPLE_BIRD}),
    ("/inpaint", {"image": {"background": handle_file(EXAMPLE_LAKE), "layers": [], "composite": None},
                  "mask_image": handle_file(EXAMPLE_BIRD), "prompt": "a fox"}),
    ("/outpaint", {"image": EXAMPLE_BIRD, "prompt": "a fox", "expand_left": 32}),
    ("/control", {"image": EXAMPLE_LAKE, "prompt": "a fox", "control_type": "canny"}),
    ("/control", {"image": EXAMPLE_LAKE, "prompt": "a fox", "control_type": "depth"}),
]
# Mode switches in one run of REQUESTS (the two control requests are one mode).
SWITCHES_PER_RUN = 7


def run_every_mode(client):
    for api_name, kwargs in REQUESTS:
        options = {**FAST, "seed": 1} if api_name != "/outpaint" else {"num_inference_steps": 2, "seed": 1}
        call(client, api_name, **kwargs, **options)


def test_cycling_modes_loads_nothing_and_shares_every_component(client, playground):
    run_every_mode(client)
    before = client.predict(api_name="/status")
    run_every_mode(client)
    run_every_mode(client)
    after = client.predict(api_name="/status")

    expected = {"scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                "transformer", "kontext_transformer", "image_encoder", "feature_extractor", "image_embedder",
                "canny_lora", "depth_lora", "depth_estimator", "depth_processor"}
    assert set(after["components"]) == expected
    assert {name: c["load_count"] for name, c in after["components"].items()} == dict.fromkeys(expected, 1)
    # Nothing reloaded; only the dev transformer's size changes while a control LoRA is on it.
    unchanged = {name: c for name, c in after["components"].items() if name != "transformer"}
    assert unchanged == {name: c for name, c in before["components"].items() if name != "transformer"}
    assert after["mode_switches"] - before["mode_switches"] == 2 * SWITCHES_PER_RUN

    pipelines = after["pipelines"]
    for name in ("text_to_image", "image_to_image", "inpaint", "control"):
        assert pipelines[name]["components"]["transformer"] == "transformer"
    assert pipelines["kontext_edit"]["components"]["transformer"] == "kontext_transformer"
    for name in ("text_to_image", "image_to_image", "kontext_edit", "redux_prior"):
        slots = pipelines[name]["components"]
        assert slots["text_encoder_2"] == "text_encoder_2" and slots["text_encoder"] == "text_encoder"
    assert "<not shared>" not in str(pipelines)
    # No weight is stored twice.
    assert after["unique_resident_bytes"] == after["resident_bytes"] > 0

    # The same objects, in-process: Redux's generation runs on the dev transformer.
    manager = playground.manager
    dev = manager.component("transformer")
    assert manager.pipeline("text_to_image").transformer is dev
    assert manager.pipeline("image_to_image").transformer is dev
    assert manager.pipeline("kontext_edit").transformer is manager.component("kontext_transformer") is not dev
    assert manager.pipeline("redux_prior").text_encoder_2 is manager.pipeline("kontext_edit").text_encoder_2


def test_status_reports_placement_and_sources(client, family):
    status = client.predict(api_name="/status")
    assert status["demo"] is True and status["demo_reason"]
    transformer = status["components"]["transformer"]
    assert transformer["device"] == "cpu" and transformer["dtype"] == status["dtype"] == "float32"
    assert transformer["source"] == str(family["dev"]) and transformer["subfolder"] == "transformer"
    assert status["components"]["kontext_transformer"]["source"] == str(family["kontext"])
    assert transformer["bytes"] > 0 and transformer["class"] == "FluxTransformer2DModel"
    # Room for everything: every component stays where it was put, nothing is swapped or offloaded.
    assert status["residency"] == {"policy": "resident"} and status["acceleration"]["profile"] == "none"
    # gradio_client downloads any dict with a "path" key as a file: status must have none.
    assert '"path"' not in str(status).replace("'", '"')
