"""The hot-swapped LoRA slot of a compiled transformer: its arithmetic, its limits, and how a
manager with a compiling profile takes LoRAs into it (the app-level results are compared with
one adapter per LoRA in test_acceleration_app.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.errors import FieldError
from pipelines.loras.slot import (
    Factors,
    FoldedLora,
    SlotError,
    combined_state_dict,
    fit_columns,
)
from pipelines.models.sources import pick_placement
from pipelines.modes.parsing import parse_request
from pipelines.modes.request_types import ServerCapabilities
from presets.acceleration import ACCELERATION


def factors(rank: int, width_in: int, width_out: int, seed: int) -> Factors:
    generator = torch.Generator().manual_seed(seed)
    return Factors(torch.randn(rank, width_in, generator=generator), torch.randn(width_out, rank, generator=generator))


def test_one_combined_lora_is_the_weighted_sum_of_the_loras():
    layers = {"q": torch.nn.Linear(8, 6), "ff": torch.nn.Linear(8, 12), "out": torch.nn.Linear(6, 6)}
    first = FoldedLora({"q": factors(2, 8, 6, 1), "ff": factors(2, 8, 12, 2)})
    second = FoldedLora({"q": factors(3, 8, 6, 3)})
    state = combined_state_dict([(first, 0.5), (second, -2.0)], layers, rank=8)
    assert set(state) == {"q.lora_A.weight", "q.lora_B.weight", "ff.lora_A.weight", "ff.lora_B.weight"}
    assert state["q.lora_A.weight"].shape == (8, 8) and state["q.lora_B.weight"].shape == (6, 8)
    expected_q = 0.5 * first.modules["q"].up @ first.modules["q"].down - 2.0 * second.modules["q"].up @ second.modules["q"].down
    torch.testing.assert_close(state["q.lora_B.weight"] @ state["q.lora_A.weight"], expected_q)
    torch.testing.assert_close(state["ff.lora_B.weight"] @ state["ff.lora_A.weight"],
                               0.5 * first.modules["ff"].up @ first.modules["ff"].down)
    assert not state["ff.lora_A.weight"][2:].any()  # padding: zero rows past the LoRA's rank


def test_ranks_beyond_the_slot_are_refused_by_name():
    layers = {"q": torch.nn.Linear(8, 6)}
    lora = FoldedLora({"q": factors(4, 8, 6, 1)})
    with pytest.raises(SlotError, match="add up to 8 on q.*rank 6.*--lora-rank"):
        combined_state_dict([(lora, 1.0), (lora, 1.0)], layers, rank=6)


def test_down_projections_fit_the_control_widened_input():
    down = torch.randn(2, 4)
    widened = fit_columns(down, 6)
    assert widened.shape == (2, 6) and torch.equal(widened[:, :4], down) and not widened[:, 4:].any()
    assert torch.equal(fit_columns(widened, 4), down)


def test_validation_names_the_rank_limit():
    offer = ServerCapabilities(loras=frozenset({"a", "b"}), lora_ranks={"a": 40, "b": 32}, lora_rank_limit=64)
    request = {"prompt": "a lighthouse"}
    assert parse_request("text_to_image", {**request, "loras": "a:1"}, offer).loras == (("a", 1.0),)
    with pytest.raises(FieldError) as raised:
        parse_request("text_to_image", {**request, "loras": "a:1, b:0.5"}, offer)
    message = str(raised.value)
    assert raised.value.field == "loras" and "add up to 72" in message and "rank 64 (--lora-rank)" in message
    # Without a compiled transformer there is no such limit.
    plain = ServerCapabilities(loras=frozenset({"a", "b"}), lora_ranks={"a": 40, "b": 32})
    assert len(parse_request("text_to_image", {**request, "loras": "a, b"}, plain).loras) == 2


@pytest.fixture(scope="module")
def compiled_manager(family):
    """A demo manager with the regular profile (compilation is lazy: nothing compiles here)."""
    from pipelines.models.startup import demo_manager

    return lambda rank: demo_manager(pick_placement(), acceleration=ACCELERATION.profile("regular"), lora_rank=rank)


def test_a_compiled_manager_folds_loras_into_the_slot(compiled_manager, family):
    manager = compiled_manager(64)
    lora = manager.load_lora(str(family["loras"] / "tiny-style-lora"), "style")
    transformer = manager.pipeline("text_to_image").transformer
    assert list(transformer.peft_config) == ["playground_loras"]  # the LoRA's own adapter is gone
    adapters = manager.status()["adapters"]
    assert adapters["method"] == "hot-swap slot" and adapters["slot"]["rank"] == 64 and lora.rank == 4
    assert manager.loras.ranks() == ({"style": 4}, 64)
    manager.load_lora(str(family["loras"] / "tiny-kohya-style.safetensors"), "kohya")
    encoder_adapters = manager.pipeline("text_to_image").get_list_adapters()["text_encoder"]
    assert encoder_adapters == ["kohya"]  # the text encoder keeps its own adapter
    manager.unload_lora("kohya")
    manager.unload_lora("style")
    assert list(transformer.peft_config) == ["playground_loras"]  # the slot stays, switched off
    assert not manager.pipeline("text_to_image").get_list_adapters().get("text_encoder")
    with pytest.raises(FieldError, match="server's own"):
        manager.load_lora(str(family["loras"] / "tiny-style-lora"), "playground_loras")


def test_a_lora_above_the_slot_rank_is_refused_and_leaves_nothing(compiled_manager, family):
    manager = compiled_manager(2)
    with pytest.raises(FieldError, match="rank is 4.*--lora-rank 4") as raised:
        manager.load_lora(str(family["loras"] / "tiny-style-lora"), "style")
    assert raised.value.field == "source"
    assert manager.loras.names() == frozenset()
    assert list(manager.pipeline("text_to_image").transformer.peft_config) == ["playground_loras"]


def test_a_text_encoder_only_lora_leaves_the_slot_alone(compiled_manager, family, tmp_path):
    """A LoRA with nothing for the transformer: the slot is not switched on for it, also right
    after it held another LoRA's update."""
    kohya = load_file(family["loras"] / "tiny-kohya-style.safetensors")
    save_file({k: v for k, v in kohya.items() if k.startswith("lora_te1_")}, tmp_path / "words.safetensors")
    manager = compiled_manager(64)
    manager.load_lora(str(family["loras"] / "tiny-style-lora"), "style")
    manager.load_lora(str(tmp_path / "words.safetensors"), "words")
    assert manager.loras.ranks() == ({"style": 4, "words": 0}, 64)
    with manager.lock:
        pipe = manager.enter("text_to_image", ("text_to_image",), loras=(("style", 1.0), ("words", 0.5)))[0]
        assert pipe.transformer.active_adapters() == ["playground_loras"]
        assert pipe.text_encoder.active_adapters() == ["words"]
        manager.enter("text_to_image", ("text_to_image",), loras=(("words", 1.0),))
        assert active_slot(pipe) == []


def active_slot(pipe) -> list[str]:
    """The transformer's active adapters, or none when its LoRA layers are disabled."""
    layers = [m for m in pipe.transformer.modules() if hasattr(m, "disable_adapters")]
    return [] if all(m.disable_adapters for m in layers) else pipe.transformer.active_adapters()


@pytest.mark.parametrize("profile", ["none", "regular"])
def test_a_failed_control_rebuild_leaves_the_loras_working(family, tmp_path, profile):
    """The control LoRA cannot be loaded: that request fails, and the users' LoRAs still apply
    in the next one (with one adapter per LoRA and with the slot)."""
    from dataclasses import replace

    from pipelines.models.startup import demo_manager

    manager = demo_manager(pick_placement(), acceleration=ACCELERATION.profile(profile))
    manager.load_lora(str(family["loras"] / "tiny-style-lora"), "style")
    manager.sources = replace(manager.sources, canny_lora=str(tmp_path / "no-such-lora"))
    with manager.lock:
        with pytest.raises(ValueError, match="no-such-lora"):
            manager.enter("control", ("control",), "canny", loras=(("style", 1.0),))
        pipe = manager.enter("text_to_image", ("text_to_image",), loras=(("style", 1.0),))[0]
    adapter = "playground_loras" if profile == "regular" else "style"
    assert pipe.transformer.active_adapters() == [adapter]
    assert manager.status()["adapters"]["control"] is None
