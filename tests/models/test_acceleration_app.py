"""Acceleration profiles and residency policies in the served app, driven through gradio_client:
what `/status` reports, results against the plain profile, step caching per request, LoRAs and
control on a compiled transformer, and swapping transformers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    EXAMPLE_BIRD,
    EXAMPLE_LAKE,
    FAST,
    call,
    pixels,
    result_images,
    running_server,
)
from gradio_client import Client

from ui.tabs import compiled_lora_note

REQUEST = {"prompt": "a lighthouse", **FAST, "seed": 21, "enable_safety_checker": False}


def t2i(client, **kwargs):
    return pixels(result_images(call(client, "/text_to_image", **{**REQUEST, **kwargs}))[0])


@pytest.fixture(scope="module")
def regular(family, tmp_path_factory):
    """The demo app with `--acceleration regular`, compiling 256x256 at start into its own cache;
    its LoRA slot holds rank 8: the two demo LoRAs (rank 4 each) together, not three."""
    folder = tmp_path_factory.mktemp("regular")
    args = ["--acceleration", "regular", "--warm-up", "256x256", "--compile-cache", str(folder / "compile"),
            "--lora-rank", "8"]
    with running_server(args, folder / "out") as (_, playground, url):
        yield Client(url, verbose=False), playground, folder


def test_regular_compiles_the_repeated_blocks_and_says_what_it_skipped(regular):
    client, _, folder = regular
    status = client.predict(api_name="/status")["acceleration"]
    assert status["profile"] == "regular"
    report = status["transformers"]["transformer"]
    assert "compile" in report["applied"] and "blocks" in report["applied"]["compile"]
    assert "LoRA" in report["skipped"]["fuse_qkv"]  # the dev transformer carries LoRAs
    assert status["warm_up"]["sizes"] and status["cache"]["dir"] == str(folder / "compile")
    assert (folder / "compile" / "mega-cache.bin").is_file()  # a restart loads these


def test_regular_matches_none_within_float_tolerance(regular, client):
    accelerated, plain = t2i(regular[0]), t2i(client)
    assert np.abs(accelerated - plain).max() <= 2


def test_step_caching_is_per_request_and_leaves_no_trace(regular):
    client = regular[0]
    request = {**REQUEST, "num_inference_steps": 6}
    before = t2i(client, **request)
    cached = call(client, "/text_to_image", **request, step_cache="first_block")
    assert cached[2]["step_cache"] == "first_block"
    assert np.array_equal(t2i(client, **request), before)  # the next request runs uncached again


def test_loras_on_the_compiled_transformer_share_one_hot_swapped_adapter(regular, client, playground):
    """The same pictures as one adapter per LoRA (the plain app), within float tolerance, for
    LoRAs alone, together, at negative weights and under control; unloading restores the base."""
    compiled = regular[0]
    base = t2i(compiled)
    for app in (compiled, client):
        app.predict(source="tiny-style-lora", name=None, api_name="/load_lora")
        app.predict(source="tiny-kohya-style.safetensors", name="kohya", api_name="/load_lora")
    control = {"image": EXAMPLE_LAKE, "prompt": "a castle", **FAST, "num_inference_steps": 2, "seed": 4,
               "enable_safety_checker": False}
    try:
        for loras in ("tiny-style-lora:1", "kohya:0.8", "tiny-style-lora:0.5, kohya:-1"):
            hot_swapped, separate = t2i(compiled, loras=loras), t2i(client, loras=loras)
            assert np.abs(hot_swapped - base).mean() > 1 and np.abs(hot_swapped - separate).max() <= 2, loras
        controlled = [pixels(result_images(call(app, "/control", **control, loras="kohya:1"))[0])
                      for app in (compiled, client)]
        assert np.abs(controlled[0] - controlled[1]).max() <= 2
        # Back from control (the adapters rebuilt; the slot kept the style LoRA's factors).
        after = t2i(compiled, loras="tiny-style-lora:1, kohya:0.5")
        assert np.abs(after - t2i(client, loras="tiny-style-lora:1, kohya:0.5")).max() <= 2
        adapters = compiled.predict(api_name="/status")["adapters"]
        assert adapters["method"] == "hot-swap slot" and adapters["slot"]["swaps"] >= 4
        # The LoRAs tab says so; the plain app has no such limit. Past it, the field is named.
        assert "one adapter of rank 8" in compiled_lora_note(regular[1]) and not compiled_lora_note(playground)
        compiled.predict(source="tiny-style-lora", name="again", api_name="/load_lora")
        with pytest.raises(Exception, match=r"loras: the ranks of .* add up to 12; .* may add up to rank 8"):
            t2i(compiled, loras="tiny-style-lora, kohya, again")
        compiled.predict(name="again", api_name="/unload_lora")
    finally:
        for app in (compiled, client):
            for name in ("tiny-style-lora", "kohya"):
                app.predict(name=name, api_name="/unload_lora")
    assert np.array_equal(t2i(compiled), base)


def test_swap_residency_moves_transformers_and_changes_no_pixel(family, tmp_path, client):
    """One FLUX transformer on the accelerator at a time; the same results as all resident."""
    kontext = {"image": EXAMPLE_BIRD, "prompt": "make it red", **FAST, "seed": 3, "enable_safety_checker": False}
    plain = (t2i(client), pixels(result_images(call(client, "/kontext_edit", **kontext))[0]))
    with running_server(["--residency", "swap"], tmp_path / "out") as (_, _playground, url):
        swapping = Client(url, verbose=False)
        assert np.array_equal(t2i(swapping), plain[0])
        assert np.array_equal(pixels(result_images(call(swapping, "/kontext_edit", **kontext))[0]), plain[1])
        assert np.array_equal(t2i(swapping), plain[0])  # and back
        residency = swapping.predict(api_name="/status")["residency"]
    assert residency["policy"] == "swap" and residency["on_device"] == ["transformer"]
    assert residency["on_host"] == ["kontext_transformer"]
    assert residency["swaps_in"]["kontext_transformer"] == 1 and residency["swaps_out"]["kontext_transformer"] == 1
