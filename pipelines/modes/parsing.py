"""Raw field values -> a validated, frozen request: the one parse every way in goes through.

Every field is checked and every problem reported at once (one `FieldError` listing them),
each naming the field and what it accepts, before any accelerator time is spent. Absent or
None values take the preset default, so callers may omit what they do not care about.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pipelines.errors import FieldError
from pipelines.modes.fields import FieldReader
from pipelines.modes.request_types import GenerationRequest, ServerCapabilities
from pipelines.modes.table import MODES


def parse_request(mode: str, raw: Mapping[str, Any],
                  capabilities: ServerCapabilities = ServerCapabilities()) -> GenerationRequest:
    """The validated request for `mode` (seed still -1 when asked for a random one), or a
    FieldError listing every invalid field."""
    spec = MODES[mode]
    route = spec.route_for(capabilities.fill)
    fields = FieldReader(raw, mode, spec.variant(raw, capabilities.fill), spec.match_input)
    values: dict[str, Any] = {
        "prompt": fields.text("prompt", required=spec.prompt_required),
        "num_inference_steps": fields.number("num_inference_steps"),
        "guidance_scale": fields.number("guidance_scale"),
        "seed": fields.number("seed"),
        "num_images": fields.number("num_images"),
        "output_format": fields.choice("output_format"),
        "output_quality": fields.number("output_quality"),
        "enable_safety_checker": fields.flag("enable_safety_checker"),
        "live_preview": fields.flag("live_preview"),
        "step_cache": fields.choice("step_cache"),
    }
    if spec.route.takes_loras:  # the field exists; on a route without LoRAs, naming one is refused
        usable = capabilities.loras if route.takes_loras else None
        values["loras"] = fields.loras("loras", usable, capabilities.lora_ranks, capabilities.lora_rank_limit)
    spec.read_fields(fields, values)
    if fields.errors:
        raise FieldError.collect(fields.errors)
    return spec.request_type(**values, mode=spec.name, warnings=tuple(fields.warnings),
                             inputs=MappingProxyType(fields.inputs))
