"""The modes, declared once: everything that is true of a mode, in one table.

The request parser, the service, the Gradio endpoints and tabs, the REST routes and the
benchmark all read `MODES`; nothing else lists modes. A mode's sizes, ranges and defaults
live in `presets/parameters.toml` under `[modes.<name>]`. "Adding a mode" in the README
says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from PIL import Image

from pipelines.imaging.images import kontext_size
from pipelines.modes import calls, readers
from pipelines.modes.fields import FieldReader
from pipelines.modes.request_types import (
    ControlRequest,
    GenerationRequest,
    ImageToImageRequest,
    InpaintRequest,
    KontextEditRequest,
    OutpaintRequest,
    ReduxVariationRequest,
    TextToImageRequest,
)
from presets import PRESETS

# (fields, values) -> None: reads the mode's own fields into the request's values.
ReadFields = Callable[[FieldReader, dict], None]
# (request, the pipelines that run before the generating one) -> the diffusers call's arguments.
CallArguments = Callable[[Any, tuple], dict]


@dataclass(frozen=True)
class Route:
    """What a mode runs on: the manager's pipelines (the generating one last), the model
    repositories behind them (fields of ModelSources), whether users' LoRAs apply, and the
    presets variant whose defaults apply."""

    pipelines: tuple[str, ...]
    models: tuple[str, ...]
    takes_loras: bool = True
    variant: str | None = None


@dataclass(frozen=True)
class Mode:
    """One mode: its request, its endpoint and tab, what it runs on and its diffusers call."""

    name: str  # the endpoint (/name), the tab's id, presets' [modes.name], a request's `mode`
    request_type: type[GenerationRequest]
    read_fields: ReadFields
    call_arguments: CallArguments
    parameters: tuple[str, ...]  # its own API parameters, in order; the shared ones follow
    required: tuple[str, ...]
    description: str  # on the API page
    route: Route
    # With FLUX.1-Fill-dev configured, the route instead of `route` (the Fill rule, as data).
    fill_route: Route | None = None
    match_input: Callable[[int, int], tuple[int, int]] = readers.fit_to_range  # image_size=match_input
    sized: bool = True  # takes image_size/width/height (outpainting's size is its canvas)
    prompt_required: bool = True
    # The choice whose value picks the presets variant (control_type: Canny's or Depth's defaults).
    variant_field: str | None = None
    # The request's field naming the control LoRA that goes on the transformer (control mode).
    control_field: str | None = None
    # Computed before generation, under the accelerator: (request, components) -> request, with
    # the components `prepare_components(request)` names (the depth estimator for a depth map).
    prepare: Callable[[Any, Mapping[str, Any]], Any] | None = None
    prepare_components: Callable[[Any], tuple[str, ...]] = lambda request: ()
    # Applied to each generated image: inpainting keeps the input's pixels outside the mask.
    finish: Callable[[Any, Image.Image], Image.Image] | None = None
    chains_results: bool = False  # the page can send a result back as the next input (Kontext)
    compares_to_input: bool = False  # the page shows the result against its input, before/after

    def route_for(self, fill: bool) -> Route:
        """The route with the models configured (`fill`: FLUX.1-Fill-dev is)."""
        return self.fill_route if fill and self.fill_route is not None else self.route

    def variant(self, raw: Mapping[str, Any], fill: bool) -> str | None:
        """Which presets variant a request's defaults come from: the route's (Fill), else the
        value of `variant_field` (the preset choice's default when absent or unknown)."""
        route = self.route_for(fill)
        if route.variant or self.variant_field is None:
            return route.variant
        choice = PRESETS.choices[self.variant_field]
        value = raw.get(self.variant_field)
        return value if value in choice.values else choice.default

    @property
    def returns_control_image(self) -> bool:
        """A control mode also returns the control map it used."""
        return self.control_field is not None

    def control(self, request: GenerationRequest) -> str | None:
        """The control LoRA this request puts on the transformer, if any."""
        return getattr(request, self.control_field) if self.control_field else None


DEV = Route(pipelines=("text_to_image",), models=("dev",))
FILL = Route(pipelines=("fill",), models=("fill",), takes_loras=False, variant="fill")

MODES: Mapping[str, Mode] = MappingProxyType({mode.name: mode for mode in (
    Mode(
        "text_to_image", TextToImageRequest, readers.read_text_to_image, calls.text_to_image_arguments,
        parameters=("prompt", "negative_prompt", "true_cfg_scale"), required=("prompt",),
        description="Generate images from a prompt with FLUX.1 [dev]. Returns the images, the seed used and "
                    "the parameters with timings.",
        route=DEV,
    ),
    Mode(
        "image_to_image", ImageToImageRequest, readers.read_image_to_image, calls.image_to_image_arguments,
        parameters=("image", "prompt", "strength"), required=("image", "prompt"),
        description="Transform an input image with a prompt (FLUX.1 [dev] image-to-image); strength sets how "
                    "much changes. By default the output has the input's size.",
        route=Route(pipelines=("image_to_image",), models=("dev",)), compares_to_input=True,
    ),
    Mode(
        "kontext_edit", KontextEditRequest, readers.read_kontext_edit, calls.kontext_edit_arguments,
        parameters=("image", "prompt", "negative_prompt", "true_cfg_scale"), required=("image", "prompt"),
        description="Edit an image by instruction with FLUX.1 Kontext [dev]. By default the output has the "
                    "Kontext training resolution (about one megapixel) nearest the input's aspect.",
        route=Route(pipelines=("kontext_edit",), models=("kontext",), takes_loras=False),
        match_input=kontext_size, chains_results=True, compares_to_input=True,
    ),
    Mode(
        "redux_variation", ReduxVariationRequest, readers.read_redux_variation, calls.redux_variation_arguments,
        parameters=("image", "prompt", "prompt_embeds_scale", "pooled_prompt_embeds_scale"), required=("image",),
        description="Make variations of an image with FLUX.1 Redux [dev] on FLUX.1 [dev]; an optional prompt "
                    "steers them. By default the output keeps the input's aspect at about one megapixel.",
        # Redux's prior feeds its embeddings to the text-to-image pipeline on the dev transformer.
        route=Route(pipelines=("redux_prior", "text_to_image"), models=("redux", "dev")),
        match_input=readers.one_megapixel, prompt_required=False,
    ),
    Mode(
        "inpaint", InpaintRequest, readers.read_inpaint, calls.inpaint_arguments,
        parameters=("image", "prompt", "mask_image", "strength", "mask_blur"), required=("image", "prompt"),
        description="Repaint the masked part of an image (white in mask_image, or painted layers of the image "
                    "editor's value) with FLUX.1 [dev], or FLUX.1 Fill [dev] when the server has it. Pixels "
                    "outside the mask are returned unchanged.",
        route=Route(pipelines=("inpaint",), models=("dev",)), fill_route=FILL, finish=calls.keep_unmasked_pixels,
        compares_to_input=True,
    ),
    Mode(
        "outpaint", OutpaintRequest, readers.read_outpaint, calls.inpaint_arguments,
        parameters=("image", "prompt", "expand_left", "expand_right", "expand_top", "expand_bottom",
                    "aspect_ratio", "strength", "mask_blur"), required=("image", "prompt"),
        description="Extend an image by the given pixels on each side, or to a target aspect ratio; the output "
                    "is the padded canvas (sides multiples of 16) with the input's pixels unchanged.",
        route=Route(pipelines=("inpaint",), models=("dev",)), fill_route=FILL, finish=calls.keep_unmasked_pixels,
        sized=False, compares_to_input=True,
    ),
    Mode(
        "control", ControlRequest, readers.read_control, calls.control_arguments,
        parameters=("image", "prompt", "control_type", "preprocess", "canny_low_threshold",
                    "canny_high_threshold"), required=("image", "prompt"),
        description="Generate following the structure of an image: its Canny edges or its depth, with BFL's "
                    "FLUX.1 Canny/Depth [dev] LoRAs on FLUX.1 [dev]. Also returns the control map used.",
        route=Route(pipelines=("control",), models=("dev",)),
        variant_field="control_type", control_field="control_type",
        prepare=calls.with_control_map, prepare_components=calls.control_map_components, compares_to_input=True,
    ),
)})
