"""The model components and the pipelines built from them, declared once.

A component is loaded from one repository's subfolder by one class; a pipeline is a diffusers
class given, per constructor argument, a loaded component. Sharing a component between
pipelines shares its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlPipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxPriorReduxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from transformers import (
    AutoImageProcessor,
    AutoModelForDepthEstimation,
    CLIPTextModel,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from pipelines.loras.adapters import LoraTensors


@dataclass(frozen=True)
class ComponentSpec:
    """One loadable component: which repository, which subfolder, which class loads it."""

    source: str  # "dev", "kontext", "redux", ...: a field of ModelSources
    subfolder: str | None  # None: the repository's root
    loader: type
    module: bool = True  # weights to place on the accelerator in the manager's dtype


COMPONENTS: dict[str, ComponentSpec] = {
    "scheduler": ComponentSpec("dev", "scheduler", FlowMatchEulerDiscreteScheduler, module=False),
    "vae": ComponentSpec("dev", "vae", AutoencoderKL),
    "text_encoder": ComponentSpec("dev", "text_encoder", CLIPTextModel),
    "tokenizer": ComponentSpec("dev", "tokenizer", CLIPTokenizer, module=False),
    "text_encoder_2": ComponentSpec("dev", "text_encoder_2", T5EncoderModel),
    "tokenizer_2": ComponentSpec("dev", "tokenizer_2", T5TokenizerFast, module=False),
    "transformer": ComponentSpec("dev", "transformer", FluxTransformer2DModel),
    # Kontext shares dev's text encoders, tokenizers, VAE and scheduler; only its
    # transformer differs.
    "kontext_transformer": ComponentSpec("kontext", "transformer", FluxTransformer2DModel),
    "image_encoder": ComponentSpec("redux", "image_encoder", SiglipVisionModel),
    "feature_extractor": ComponentSpec("redux", "feature_extractor", SiglipImageProcessor, module=False),
    "image_embedder": ComponentSpec("redux", "image_embedder", ReduxImageEncoder),
    # FLUX.1-Fill-dev's transformer, when configured; everything else is dev's.
    "fill_transformer": ComponentSpec("fill", "transformer", FluxTransformer2DModel),
    # Structural control: BFL's LoRAs, kept as CPU tensors, and the depth estimator.
    "canny_lora": ComponentSpec("canny_lora", None, LoraTensors, module=False),
    "depth_lora": ComponentSpec("depth_lora", None, LoraTensors, module=False),
    "depth_estimator": ComponentSpec("depth", None, AutoModelForDepthEstimation),
    "depth_processor": ComponentSpec("depth", None, AutoImageProcessor, module=False),
}

_TEXT = {
    "text_encoder": "text_encoder",
    "tokenizer": "tokenizer",
    "text_encoder_2": "text_encoder_2",
    "tokenizer_2": "tokenizer_2",
}
_DEV = {"scheduler": "scheduler", "vae": "vae", **_TEXT, "transformer": "transformer"}

# Each pipeline: its diffusers class and, per constructor argument, the component it gets.
PIPELINES: dict[str, tuple[type, dict[str, str]]] = {
    "text_to_image": (FluxPipeline, _DEV),
    "image_to_image": (FluxImg2ImgPipeline, _DEV),
    "kontext_edit": (FluxKontextPipeline, {**_DEV, "transformer": "kontext_transformer"}),
    # Redux's prior gets dev's text encoders so that an optional prompt is encoded too.
    "redux_prior": (
        FluxPriorReduxPipeline,
        {"image_encoder": "image_encoder", "feature_extractor": "feature_extractor",
         "image_embedder": "image_embedder", **_TEXT},
    ),
    "inpaint": (FluxInpaintPipeline, _DEV),
    "fill": (FluxFillPipeline, {**_DEV, "transformer": "fill_transformer"}),
    "control": (FluxControlPipeline, _DEV),
}
# The FLUX transformers: what acceleration profiles change and the residency policy may swap.
TRANSFORMERS = ("transformer", "kontext_transformer", "fill_transformer")
# What a control request needs beside its pipeline.
CONTROL_COMPONENTS = {"canny": ("canny_lora",), "depth": ("depth_lora", "depth_estimator", "depth_processor")}
