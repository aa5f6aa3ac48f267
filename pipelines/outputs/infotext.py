"""A1111's "infotext": generation parameters as A1111, Forge and the tools that read their
images write them, and back.

    a cat in a hat
    Negative prompt: blurry
    Steps: 28, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42, Size: 1024x768, ...

Prompt first, a "Negative prompt:" line when there is one, then one line of "Label: value"
pairs, a value JSON-quoted when it holds a comma, colon or newline. Follows A1111's
modules/processing.py `create_infotext` and infotext_utils.py `parse_generation_parameters`.
"""

from __future__ import annotations

import json
import re
from typing import Any

# diffusers runs FLUX with FlowMatchEulerDiscreteScheduler: Forge writes that sampler as "Euler",
# a name A1111-reading tools know, where "flow_match_euler" would restore as an unknown sampler.
SAMPLER = "Euler"
# Forge's label for FLUX's distilled guidance; "Distilled guidance" is read back as well.
DISTILLED_LABELS = ("Distilled CFG Scale", "Distilled guidance")

# Infotext labels after "Model", with the info field each one carries.
EXTRA_FIELDS = (
    ("Denoising strength", "strength"),  # A1111's label for img2img strength
    ("Prompt embeds scale", "prompt_embeds_scale"),
    ("Pooled prompt embeds scale", "pooled_prompt_embeds_scale"),
    ("Mode", "mode"),
)
# Labels read back as they are, with the field and type each becomes.
PARSED_FIELDS = {
    "Steps": ("num_inference_steps", int),
    "Seed": ("seed", int),
    "Model": ("model", str),
    **{label: (key, str if key == "mode" else float) for label, key in EXTRA_FIELDS},
}
# A1111's own pattern for one "Label: value" of the last line; quoted values may hold commas.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE = re.compile(r"^(\d+)x(\d+)$")


def format_infotext(info: dict[str, Any]) -> str:
    """The parameters in A1111's infotext format (modules/processing.py `create_infotext`)."""
    params = {
        "Steps": info.get("num_inference_steps"),
        "Sampler": SAMPLER,
        # FLUX.1 [dev] is guidance-distilled: real CFG is off (1) unless true_cfg_scale turns it
        # on, and the guidance users set is the distilled one. Forge writes FLUX images the same way.
        "CFG scale": info.get("true_cfg_scale", 1),
        DISTILLED_LABELS[0]: info.get("guidance_scale"),
        "Seed": info.get("seed"),
        "Size": f"{info['width']}x{info['height']}" if info.get("width") and info.get("height") else None,
        "Model": info.get("model"),
        **{label: info.get(key) for label, key in EXTRA_FIELDS},
    }
    line = ", ".join(f"{label}: {_quote(_plain(value))}" for label, value in params.items() if value is not None)
    text = info.get("prompt") or ""
    if info.get("negative_prompt"):
        text += f"\nNegative prompt: {info['negative_prompt']}"
    return f"{text}\n{line}".strip()


def _plain(value: Any) -> str:
    """Numbers as A1111 shows them: 1 rather than 1.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(text: str) -> str:
    """A1111's `infotext_utils.quote`: JSON-quote values that would break the line's syntax."""
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text


def parse_infotext(text: str) -> dict[str, Any] | None:
    """A1111 infotext (`infotext_utils.parse_generation_parameters`) in our field names."""
    *lines, last = text.strip().split("\n")
    params = dict(PARAM.findall(last))
    if len(params) < 3:  # A1111's rule: a last line of fewer than 3 params is still prompt
        lines.append(last)
        params = {}
    prompt, negative = _split_prompts(lines)
    result: dict[str, Any] = {"prompt": prompt} if prompt else {}
    if negative is not None:
        result["negative_prompt"] = negative
    result.update(_parsed_params({label: _unquote(value.strip()) for label, value in params.items()}))
    return result or None


def _split_prompts(lines: list[str]) -> tuple[str, str | None]:
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        line = line.strip()
        if negative is None and line.startswith("Negative prompt:"):
            negative = [line[len("Negative prompt:"):].strip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    return "\n".join(prompt).strip(), None if negative is None else "\n".join(negative).strip()


def _parsed_params(params: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, (key, kind) in PARSED_FIELDS.items():
        _put(result, key, kind, params.get(label))
    size = SIZE.match(params.get("Size", ""))
    if size:
        result["width"], result["height"] = int(size.group(1)), int(size.group(2))
    distilled = next((params[label] for label in DISTILLED_LABELS if label in params), None)
    if distilled is not None:  # FLUX from Forge or from us: CFG scale is the real CFG
        _put(result, "guidance_scale", float, distilled)
        _put(result, "true_cfg_scale", float, params.get("CFG scale"))
    else:  # other models have only one guidance: the closest thing to ours
        _put(result, "guidance_scale", float, params.get("CFG scale"))
    return result


def _put(result: dict[str, Any], key: str, kind: type, value: str | None) -> None:
    """result[key] = kind(value), skipping absent values and ones that do not convert."""
    if value is None:
        return
    try:
        result[key] = kind(value)
    except ValueError:
        pass


def _unquote(text: str) -> str:
    """A1111's `infotext_utils.unquote`."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return str(json.loads(text))
    except ValueError:
        return text
