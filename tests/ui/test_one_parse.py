"""A request from the page or gradio_client is parsed, and its images decoded, once."""

from __future__ import annotations

from conftest import EXAMPLE_BIRD, FAST, call, result_images

import pipelines.modes.fields as fields_module


def test_the_validator_hands_its_parsed_request_to_the_endpoint(client, playground, monkeypatch):
    parses, decodes = [], []
    real_parse, real_load = playground.parse, fields_module.load_input_image

    def counting_parse(mode, raw, *args):
        parses.append(mode)
        return real_parse(mode, raw, *args)

    def counting_load(value, *args, **kwargs):
        decodes.append(value)
        return real_load(value, *args, **kwargs)

    monkeypatch.setattr(playground, "parse", counting_parse)
    monkeypatch.setattr(fields_module, "load_input_image", counting_load)
    result = call(client, "/image_to_image", image=EXAMPLE_BIRD, prompt="a bird", seed=3, live_preview=False, **FAST)
    assert parses == ["image_to_image"]
    assert len(decodes) == 1
    assert result_images(result)[0].size == (256, 256)


def test_a_random_seed_chosen_at_validation_is_the_seed_used(client):
    result = call(client, "/text_to_image", prompt="a lighthouse", seed=-1, live_preview=False, **FAST)
    assert result[1] == result[2]["seed"] and result[1] >= 0
