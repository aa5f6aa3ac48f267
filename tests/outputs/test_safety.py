"""The NSFW safety checker on the tiny classifier of the demo family (random weights: scores near 0.5)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.outputs.safety import (
    DEFAULT_SAFETY_MODEL,
    DEFAULT_THRESHOLD,
    SafetyChecker,
    blank_like,
    nsfw_index,
    nsfw_probabilities,
)

CPU = torch.device("cpu")
STATUS_KEYS = {"source", "loaded", "device", "threshold", "bytes", "load_count", "load_seconds"}


def _images() -> list[Image.Image]:
    """Three different images in different sizes and modes, as outputs and uploads come."""
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    return [
        Image.new("RGB", (64, 48), (255, 0, 0)),
        Image.new("RGBA", (300, 200), (0, 0, 255, 128)),
        Image.fromarray(noise),
    ]


def _checker(folder, **kwargs) -> SafetyChecker:
    return SafetyChecker(str(folder), CPU, local_files_only=True, **kwargs)


@pytest.fixture(scope="module")
def checker(family) -> SafetyChecker:
    return _checker(family["safety"]).load()


def test_defaults_are_bfls():
    assert DEFAULT_SAFETY_MODEL == "Falconsai/nsfw_image_detection"
    assert DEFAULT_THRESHOLD == 0.85


def test_scores_are_deterministic_probabilities(family, checker):
    scores = checker.check(_images())
    assert len(scores) == 3 and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) == 3  # the image reaches the score
    assert _checker(family["safety"]).check(_images()) == pytest.approx(scores, abs=1e-6)
    # One batch scores each image as it would alone.
    assert [checker.check([image])[0] for image in _images()] == pytest.approx(scores, abs=1e-5)
    assert checker.check([]) == []


def test_scores_match_bfls_pipeline_call(checker):
    # BFL: [x["score"] for x in classifier(image) if x["label"] == "nsfw"][0], one image at a time.
    from transformers import pipeline

    classifier = pipeline("image-classification", model=checker.source, device="cpu")
    expected = [next(x["score"] for x in classifier(image) if x["label"] == "nsfw") for image in _images()]
    assert checker.check(_images()) == pytest.approx(expected, abs=1e-5)


def test_flags_follow_the_threshold(checker):
    images = _images()
    assert checker.flags(images, threshold=0.0) == [True, True, True]
    assert checker.flags(images, threshold=1.01) == [False, False, False]
    assert checker.flags(images) == [False, False, False]  # random weights stay far below 0.85
    scores = checker.check(images)
    middle = sorted(scores)[1]
    assert checker.flags(images, threshold=middle) == [s >= middle for s in scores]  # >=, as BFL's
    assert _checker(checker.source, threshold=0.0).flags(images) == [True, True, True]


def test_the_nsfw_label_is_looked_up_in_id2label(family, checker, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(family["safety"], swapped)
    config = json.loads((swapped / "config.json").read_text())
    assert config["id2label"] == {"0": "normal", "1": "nsfw"}
    config["id2label"] = {"0": "nsfw", "1": "normal"}
    config["label2id"] = {"nsfw": 0, "normal": 1}
    (swapped / "config.json").write_text(json.dumps(config))

    scores = checker.check(_images())
    assert _checker(swapped).check(_images()) == pytest.approx([1 - s for s in scores], abs=1e-6)


def test_the_demo_classifier_cannot_reach_bfls_threshold(checker):
    # logit(nsfw) - logit(normal) = (w1 - w0) . LN(x) + b1 - b0, and the final LayerNorm's output
    # (weight g, bias c) has norm <= |g|_inf * sqrt(hidden) + |c|: so no image can score above this.
    model = checker.model
    w, b = model.classifier.weight, model.classifier.bias
    norm = model.vit.layernorm
    hidden = model.config.hidden_size
    largest_norm = norm.weight.abs().max() * hidden**0.5 + norm.bias.norm()
    reach = (w[1] - w[0]).norm() * largest_norm + (b[1] - b[0]).abs()
    assert torch.sigmoid(reach).item() < 0.75 < DEFAULT_THRESHOLD


def test_label_lookup_and_softmax():
    assert nsfw_index({0: "normal", 1: "nsfw"}) == 1
    assert nsfw_index({"0": "NSFW", "1": "normal"}) == 0
    for labels in ({0: "cat", 1: "dog"}, {0: "nsfw", 1: "NSFW"}):
        with pytest.raises(ValueError):
            nsfw_index(labels)
    probabilities = nsfw_probabilities(torch.tensor([[0.0, 0.0], [10.0, -10.0]]), 1)
    assert probabilities == pytest.approx([0.5, 0.0], abs=1e-6)


def test_a_classifier_without_an_nsfw_label_fails_on_load(family, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(family["safety"], other)
    config = json.loads((other / "config.json").read_text())
    config.update(id2label={"0": "cat", "1": "dog"}, label2id={"cat": 0, "dog": 1})
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="nsfw"):
        _checker(other).load()


def test_blank_like():
    for image in _images():
        blank = blank_like(image)
        assert blank.size == image.size and blank.mode == "RGB"
        assert blank.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_loads_lazily_once_and_reports_status(family):
    checker = _checker(family["safety"])
    status = checker.status()
    assert set(status) == STATUS_KEYS and "path" not in status
    assert status["loaded"] is False and status["load_count"] == 0 and status["bytes"] == 0

    checker.check(_images()[:1])
    checker.check(_images())
    status = checker.status()
    assert set(status) == STATUS_KEYS
    assert status == {**status, "source": str(family["safety"]), "loaded": True, "device": "cpu",
                      "threshold": 0.85, "load_count": 1}
    assert status["bytes"] > 0 and status["load_seconds"] >= 0
    parameter = next(checker.model.parameters())
    assert parameter.dtype == torch.float32 and parameter.device == CPU
    assert not parameter.requires_grad and not checker.model.training
    checker.load()
    assert checker.status()["load_count"] == 1
    json.dumps(status)  # serialisable as it is, for /status
