"""The memory plan: the real architectures' sizes, the choice per card, and the app showing it."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, REPO, call

from bench.memory_plans import card_plans, readme_table
from pipelines.models import memory_plan as mp
from pipelines.models.architectures import ComponentSize, component_sizes
from pipelines.models.sources import ModelSources, pick_placement
from pipelines.models.startup import demo_manager, demo_sources, plan_memory

GiB = mp.GiB


@pytest.fixture(scope="module")
def full_size():
    return component_sizes(ModelSources(fill="black-forest-labs/FLUX.1-Fill-dev"))


@pytest.fixture(scope="module")
def plans():
    return {(card, allowed): plan for card, allowed, plan in card_plans(ModelSources(fill=""))}


def test_the_meta_architectures_have_the_known_parameter_counts(full_size):
    params = {name: size.params for name, size in full_size.items()}
    assert params["transformer"] == params["kontext_transformer"] == 11_901_408_320  # ≈ 11.9B
    assert params["fill_transformer"] == 11_902_391_360  # in_channels 384: 983,040 more
    assert params["text_encoder_2"] == 4_762_310_656  # T5-XXL's encoder ≈ 4.76B
    assert params["text_encoder"] == 123_060_480  # CLIP-L text ≈ 123M
    assert params["vae"] == 83_819_683  # ≈ 84M
    assert params["image_encoder"] == 428_225_600  # SigLIP so400m's vision tower
    assert params["image_embedder"] == 64_503_808
    assert params["depth_estimator"] == 24_785_089  # Depth Anything V2 Small ≈ 24.8M
    # Nearly all of a transformer is linear weights (what quantization shrinks); T5's
    # 131M-parameter embedding is not.
    assert full_size["transformer"].params - full_size["transformer"].linear_params == 3_085_376
    assert full_size["text_encoder_2"].params - full_size["text_encoder_2"].linear_params == 32128 * 4096 + 24 * 2 * 4096 + 4096 + 32 * 64


@pytest.mark.parametrize(("card", "allowed", "step", "transformer"), [
    (80, False, "everything resident", ("bf16", "resident")),
    (80, True, "everything resident", ("bf16", "resident")),
    (24, False, "group offloading", ("bf16", "offload")),
    (24, True, "transformers swapped, T5 and transformers in 8 bits", ("fp8", "swap")),
    (16, False, "group offloading", ("bf16", "offload")),
    (16, True, "transformers swapped, T5 and transformers in NF4", ("nf4", "swap")),
    (12, True, "group offloading", ("bf16", "offload")),
])
def test_each_card_gets_the_plan_the_readme_shows(plans, card, allowed, step, transformer):
    plan = plans[card, allowed]
    dev = next(c for c in plan.components if c.name == "transformer")
    assert (plan.step, (dev.storage, dev.place), plan.fits) == (step, transformer, True)
    assert f"| {card} GB | {'auto' if allowed else 'none'} | {step} |" in (REPO / "README.md").read_text()


def test_the_readme_and_results_hold_the_generated_table(plans):
    table = readme_table([(card, allowed, plan) for (card, allowed), plan in plans.items()])
    assert table in (REPO / "README.md").read_text()
    assert table in (REPO / "bench" / "RESULTS.md").read_text()


def test_the_48_gb_card_swaps_and_the_peak_holds_one_transformer(plans):
    plan = plans[48, False]
    by_name = {c.name: c for c in plan.components}
    resident = sum(c.bytes for c in plan.components if c.place == "resident")
    assert plan.residency == "swap" and by_name["text_encoder_2"].place == "resident"
    assert plan.peak_bytes == resident + by_name["transformer"].bytes + plan.activation_bytes


# --- the pure choice, on made-up sizes --------------------------------------------------------

SIZES = {"transformer": ComponentSize(10 * GiB, 10 * GiB, GiB), "kontext_transformer": ComponentSize(10 * GiB, 10 * GiB, GiB),
         "text_encoder_2": ComponentSize(4 * GiB, 4 * GiB, 4 * GiB), "vae": ComponentSize(GiB // 8, 0, GiB // 8)}


def chosen(free_gib: float, **options) -> str:
    return mp.choose_plan(int(free_gib * GiB), SIZES, GiB, **options).step


def test_the_fallbacks_in_order():
    # bf16: 2 × 20 + 8 + 0.25 + 1 (activations) resident; one transformer at a time: 29.25.
    assert chosen(50) == "everything resident"
    assert chosen(30) == "transformers swapped"
    assert chosen(26, quantize_allowed=True) == "transformers swapped, T5 in 8 bits"
    assert chosen(20, quantize_allowed=True) == "transformers swapped, T5 and transformers in 8 bits"
    assert chosen(9, quantize_allowed=True) == "transformers swapped, T5 and transformers in NF4"
    assert chosen(26) == chosen(5, quantize_allowed=True) == "group offloading"


def test_fp8_where_the_card_has_it_else_int8_of_the_same_size():
    fp8 = mp.choose_plan(20 * GiB, SIZES, GiB, quantize_allowed=True, fp8_available=True)
    int8 = mp.choose_plan(20 * GiB, SIZES, GiB, quantize_allowed=True, fp8_available=False)
    assert {c.storage for c in fp8.components} == {"fp8", "bf16"}
    assert {c.storage for c in int8.components} == {"int8", "bf16"}
    assert [c.bytes for c in fp8.components] == [c.bytes for c in int8.components]


def test_a_residency_override_wins_and_a_cpu_keeps_everything_where_it_is():
    assert mp.choose_plan(1, SIZES, GiB, policy="swap").residency == "swap"
    assert mp.choose_plan(10**15, SIZES, GiB, policy="offload").residency == "offload"
    cpu = mp.choose_plan(1, SIZES, GiB, quantize_allowed=True, accelerator=False)
    assert cpu.residency == "resident" and not cpu.fits and "does not fit" in cpu.table()


def test_the_allowance_for_1024_is_the_vae_decoders_plus_the_margin():
    from pipelines.models.architectures import FLUX_TRANSFORMER, FLUX_VAE

    vae = 3 * 256 * 1024 * 1024 * 2  # 1.61 GB: above the transformer's 1.07 GB with Kontext's tokens
    assert mp.transformer_activation_bytes(FLUX_TRANSFORMER, 2 * 4096 + 512, 2) < vae
    assert mp.activation_bytes(FLUX_TRANSFORMER, FLUX_VAE, 2, kontext=True) == vae + mp.ALLOCATOR_MARGIN_BYTES


# --- the demo family and the app ----------------------------------------------------------------


def floating_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


def test_the_demo_plan_counts_the_tiny_familys_real_sizes(family):
    placement = pick_placement("cpu")
    plan = plan_memory(placement, demo_sources(), "auto")
    manager = demo_manager(placement)
    assert plan.residency == "resident" and plan.fits
    assert {c.name: c.bytes for c in plan.components} == {
        c.name: floating_bytes(manager.component(c.name)) for c in plan.components}


def test_the_demo_apps_status_shows_the_plan_and_auto_residency_runs(client):
    call(client, "/text_to_image", prompt="a fox", seed=1, **FAST)
    status = client.predict(api_name="/status")
    plan = status["plan"]
    assert plan["step"] == "everything resident" and plan["residency"] == status["residency"]["policy"] == "resident"
    assert plan["components"]["transformer"] == {"storage": "fp32", "place": "resident",
                                                 "bytes": status["components"]["transformer"]["bytes"]}
    assert plan["peak_bytes"] > plan["activation_bytes"] > 0 and plan["fits"] is True
