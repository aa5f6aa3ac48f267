"""Acceleration profiles, per-request step caching, compiled artifacts on disk, and residency,
on the tiny family on CPU (float32, as the manager places it there)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.models import acceleration, residency
from pipelines.models.acceleration import (
    apply_profile,
    compiled_blocks,
    request_cache,
    request_cache_kind,
)
from presets.acceleration import ACCELERATION, compile_cache_dir, load_acceleration

SIZE, STEPS = 256, 3


@pytest.fixture(scope="module")
def parts(family):
    """Everything of a FluxPipeline but the transformer, loaded once."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(family["dev"], torch_dtype=torch.float32, local_files_only=True)
    return {name: module for name, module in pipe.components.items() if name != "transformer"}


@pytest.fixture(scope="module")
def fresh(family, parts):
    """A FluxPipeline with a freshly loaded transformer, each call."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    def build():
        transformer = FluxTransformer2DModel.from_pretrained(family["dev"], subfolder="transformer",
                                                             torch_dtype=torch.float32, local_files_only=True)
        pipe = FluxPipeline(transformer=transformer.eval().requires_grad_(False), **parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return build


@torch.inference_mode()
def generate(pipe, steps: int = STEPS) -> np.ndarray:
    return pipe("a lighthouse at dusk", width=SIZE, height=SIZE, num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(1), output_type="np").images


@pytest.fixture(scope="module")
def plain(fresh):
    """The plain diffusers pipeline and its output: the reference."""
    pipe = fresh()
    return pipe, generate(pipe)


@pytest.fixture(scope="module")
def regular(fresh):
    """A pipeline under the regular profile, run once (that run compiles), with the dynamo
    counters of that first run."""
    from torch._dynamo.utils import counters

    counters.clear()
    pipe = fresh()
    report = apply_profile(pipe.transformer, "regular", "cpu")
    image = generate(pipe)
    return pipe, report, image, {kind: dict(values) for kind, values in counters.items()}


# --- profiles ------------------------------------------------------------------------------------

def test_profiles_load_as_data():
    settings = load_acceleration()
    assert tuple(settings.profiles) == ("none", "regular", "high") and settings.default == "none"
    none, regular, high = settings.profiles.values()
    assert not (none.compile or none.fuse_qkv or none.float8) and none.cache == "off"
    assert regular.compile and regular.fuse_qkv and not regular.float8 and regular.cache == "off"
    assert high.compile and high.float8 and high.cache == "first_block"
    assert settings.profile("REGULAR") is regular and settings.profile(None) is none
    with pytest.raises(ValueError, match="none, regular, high"):
        settings.profile("turbo")
    assert settings.first_block.threshold < settings.first_block.threshold_float8
    assert (1024, 1024) in settings.compile.warmup_sizes
    assert compile_cache_dir(env={"FLUX_COMPILE_CACHE": "/x/y"}) == compile_cache_dir("/x/y")


def test_profile_none_leaves_the_transformer_untouched(fresh, plain):
    pipe = fresh()
    before = {name: t.clone() for name, t in pipe.transformer.state_dict().items()}
    report = apply_profile(pipe.transformer, "none", "cpu")
    assert report["applied"] == {} and report["skipped"] == {} and report["cache_default"] == "off"
    assert compiled_blocks(pipe.transformer) == []
    after = pipe.transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert np.array_equal(generate(pipe), plain[1])  # bit for bit the plain diffusers result


def test_regular_compiles_the_repeated_blocks_without_graph_breaks(regular, plain):
    pipe, report, image, counters = regular
    assert set(report["applied"]) == {"fuse_qkv", "attention", "compile"} and report["skipped"] == {}
    assert report["applied"]["attention"].startswith("native")  # CPU: torch's SDPA
    # The tiny family has one double-stream and one single-stream block.
    assert compiled_blocks(pipe.transformer) == ["transformer_blocks.0", "single_transformer_blocks.0"]
    assert counters["stats"]["unique_graphs"] >= 2  # one per block class, at least
    assert not counters.get("graph_break")  # fullgraph=False loses nothing without caching
    np.testing.assert_allclose(image, plain[1], atol=1e-4)


def test_fused_qkv_alone_is_within_tolerance(fresh, plain):
    pipe = fresh()
    note = acceleration.fuse_qkv(pipe.transformer)
    assert note.startswith("2 attention modules")
    np.testing.assert_allclose(generate(pipe), plain[1], atol=1e-5)
    with pytest.raises(acceleration.Skipped, match="LoRA"):
        acceleration.fuse_qkv(fresh().transformer, loras=True)


def test_high_on_cpu_skips_float8_with_a_reason(fresh):
    pipe = fresh()
    report = apply_profile(pipe.transformer, "high", "cpu", loras=True)
    assert "CUDA" in report["skipped"]["float8"] and "cpu" in report["skipped"]["float8"]
    assert "LoRA" in report["skipped"]["fuse_qkv"]
    assert "compile" in report["applied"] and report["float8"] is False
    assert report["cache_default"] == "first_block"


# --- per-request caching ------------------------------------------------------------------------

def test_request_cache_kind_follows_the_request_then_the_profile():
    none, high = ACCELERATION.profile("none"), ACCELERATION.profile("high")
    assert request_cache_kind(none) == "off" and request_cache_kind(high) == "first_block"
    assert request_cache_kind(high, False) == "off" and request_cache_kind(none, True) == "first_block"
    assert request_cache_kind(none, "taylorseer") == "taylorseer"
    with pytest.raises(ValueError):
        request_cache_kind(none, "sometimes")
    assert acceleration.cache_config("off") is None
    assert acceleration.cache_config("first_block").threshold == ACCELERATION.first_block.threshold
    assert acceleration.cache_config("first_block", float8=True).threshold == ACCELERATION.first_block.threshold_float8
    assert acceleration.cache_config("taylorseer").cache_interval == ACCELERATION.taylorseer.cache_interval


def with_threshold(threshold: float):
    return replace(ACCELERATION, first_block=replace(ACCELERATION.first_block, threshold=threshold))


def test_request_cache_is_off_again_after_the_request(plain):
    pipe, reference = plain
    transformer = pipe.transformer
    # Threshold 0: every step computes every block, so the hooks change nothing.
    with request_cache(pipe, "first_block", settings=with_threshold(0.0)) as kind:
        assert kind == "first_block" and transformer.is_cache_enabled
        assert np.array_equal(generate(pipe), reference)
    # A loose threshold skips blocks: the image changes, a little.
    with request_cache(pipe, "first_block", settings=with_threshold(0.9)):
        cached = generate(pipe)
    assert not np.array_equal(cached, reference) and np.abs(cached - reference).max() < 0.25
    with request_cache(pipe, "taylorseer"):
        generate(pipe, steps=12)  # TaylorSeer predicts from step 10 on
    # Off again, even after a failing call: the next request is bit-identical to the first.
    with pytest.raises(RuntimeError), request_cache(pipe, "first_block"):
        raise RuntimeError("the request failed")
    assert not transformer.is_cache_enabled
    with request_cache(pipe, "off") as kind:
        assert kind == "off" and not transformer.is_cache_enabled
    assert np.array_equal(generate(pipe), reference)


def test_request_cache_on_pipelines_that_do_not_name_their_calls(plain, parts):
    """FluxKontextPipeline (like img2img, inpaint, fill, control) enters no cache context itself."""
    from diffusers import FluxKontextPipeline
    from PIL import Image

    kontext = FluxKontextPipeline(transformer=plain[0].transformer, **parts)
    kontext.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (SIZE, SIZE), (200, 120, 40))

    @torch.inference_mode()
    def edit():
        return kontext(image=image, prompt="make it blue", width=SIZE, height=SIZE, num_inference_steps=STEPS,
                       max_area=SIZE * SIZE, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images

    before = edit()
    assert not acceleration.names_its_calls(kontext) and acceleration.names_its_calls(plain[0])
    with request_cache(kontext, "first_block", settings=with_threshold(0.9)) as kind:
        assert kind == "first_block"
        cached = edit()
    assert not np.array_equal(cached, before)
    # With true CFG its two passes would share one cache state: such calls run uncached.
    with request_cache(kontext, "first_block", true_cfg=True) as kind:
        assert kind == "off" and not kontext.transformer.is_cache_enabled
    with request_cache(plain[0], "first_block", true_cfg=True) as kind:
        assert kind == "first_block"
    assert np.array_equal(edit(), before)


def test_request_cache_runs_on_compiled_blocks(regular, plain):
    pipe, _, compiled_image, _ = regular
    loose = with_threshold(0.9)
    with request_cache(pipe, "first_block", settings=loose):
        compiled_cached = generate(pipe)
    with request_cache(plain[0], "first_block", settings=loose):
        eager_cached = generate(plain[0])
    np.testing.assert_allclose(compiled_cached, eager_cached, atol=1e-4)
    assert np.array_equal(generate(pipe), compiled_image)  # the uncached graphs are used again


# --- compiled artifacts on disk -------------------------------------------------------------------

def test_compile_cache_folder_and_artifacts(regular, tmp_path):
    env = {}
    info = acceleration.setup_compile_cache(tmp_path / "compile", env=env)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile" / "inductor") == info["inductor_dir"]
    assert info["loaded"] == {"artifacts": 0}
    env = {"TORCHINDUCTOR_CACHE_DIR": "/mine"}
    assert acceleration.setup_compile_cache(tmp_path / "compile", env=env)["inductor_dir"] == "/mine"

    saved = acceleration.save_compile_cache(tmp_path / "compile")  # what the regular run compiled
    assert saved["artifacts"] > 0 and (tmp_path / "compile" / acceleration.MEGA_CACHE_FILE).stat().st_size == saved["bytes"]
    assert acceleration.load_compile_cache(tmp_path / "compile")["artifacts"] > 0


def test_warm_up_runs_every_size_and_saves(tmp_path):
    seen = []
    result = acceleration.warm_up(lambda w, h: seen.append((w, h)), save_to=tmp_path)
    assert seen == list(ACCELERATION.compile.warmup_sizes)
    assert set(result["sizes"]) == {f"{w}x{h}" for w, h in seen} and result["seconds"] >= 0
    assert "saved" in result


# --- residency ----------------------------------------------------------------------------------

def test_swap_round_trip_is_exact_and_counted(fresh, plain):
    dev, other = fresh(), fresh()
    values = {name: t.clone() for name, t in dev.transformer.state_dict().items()}
    parameter = next(dev.transformer.parameters())
    swapper = residency.Swapper("cpu")  # CPU stands in for the accelerator: copies are real copies
    swapper.register("transformer", dev.transformer)
    swapper.register("kontext_transformer", other.transformer)
    assert swapper.pin is False and swapper.on_device() == ["transformer", "kontext_transformer"]

    assert swapper.activate("kontext_transformer") > 0  # the dev transformer leaves
    assert swapper.on_device() == ["kontext_transformer"]
    host_bytes = swapper.status()["host_copy_bytes"]
    assert host_bytes == residency.tensor_bytes(dev.transformer)
    swapper.activate("transformer")
    swapper.activate("kontext_transformer")
    assert swapper.activate("kontext_transformer") == 0.0  # already there: nothing moves
    swapper.activate("transformer")

    status = swapper.status()
    assert status["swaps_out"] == {"transformer": 2, "kontext_transformer": 2}
    assert status["swaps_in"] == {"transformer": 2, "kontext_transformer": 1}
    assert status["on_device"] == ["transformer"] and status["on_host"] == ["kontext_transformer"]
    assert status["swap_seconds"] > 0 and status["host_copy_bytes"] == 2 * host_bytes  # copies reused
    # The same parameter objects, new storage, the same values: the pipeline's output is unchanged.
    assert next(dev.transformer.parameters()) is parameter
    state = dev.transformer.state_dict()
    assert all(torch.equal(state[name], values[name]) for name in values)
    assert np.array_equal(generate(dev), plain[1])


def test_resident_policy_never_moves_others(fresh):
    swapper = residency.Swapper("cpu", policy="resident")
    swapper.register("a", fresh().transformer)
    swapper.register("b", fresh().transformer)
    assert swapper.activate("b") == 0.0 and swapper.on_device() == ["a", "b"]
    swapper.evict("a")
    assert swapper.activate("a") > 0 and swapper.status()["swaps_in"] == {"a": 1, "b": 0}


def test_group_offloading_keeps_the_result(fresh, plain):
    pipe = fresh()
    assert residency.offload(pipe.transformer, "cpu").startswith("group offloading")
    assert np.array_equal(generate(pipe), plain[1])
    assert residency.accelerator_memory("cpu") is None
