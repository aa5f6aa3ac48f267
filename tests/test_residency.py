"""Switching modes never reloads, copies or re-types a weight; `/status` proves it."""

from __future__ import annotations

from conftest import EXAMPLE_BIRD, EXAMPLE_LAKE, FAST, call

REQUESTS = [
    ("/text_to_image", {"prompt": "a fox"}),
    ("/image_to_image", {"image": EXAMPLE_LAKE, "prompt": "a fox"}),
    ("/kontext_edit", {"image": EXAMPLE_BIRD, "prompt": "a fox"}),
    ("/redux_variation", {"image": EXAMPLE_BIRD}),
]


def run_every_mode(client):
    for api_name, kwargs in REQUESTS:
        call(client, api_name, **kwargs, **FAST, seed=1)


def test_cycling_modes_loads_nothing_and_shares_every_component(client, playground):
    run_every_mode(client)
    before = client.predict(api_name="/status")
    run_every_mode(client)
    run_every_mode(client)
    after = client.predict(api_name="/status")

    expected = {"scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                "transformer", "kontext_transformer", "image_encoder", "feature_extractor", "image_embedder"}
    assert set(after["components"]) == expected
    assert {name: c["load_count"] for name, c in after["components"].items()} == dict.fromkeys(expected, 1)
    assert after["components"] == before["components"]
    # Each run of the cycle switches modes four times.
    assert after["mode_switches"] - before["mode_switches"] == 8

    pipelines = after["pipelines"]
    for name in ("text_to_image", "image_to_image"):
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
    # gradio_client downloads any dict with a "path" key as a file: status must have none.
    assert '"path"' not in str(status).replace("'", '"')
