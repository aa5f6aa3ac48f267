"""The full-size FLUX.1 architectures, built with random weights, and what one forward costs.

The configs are the hub's (`pipelines.models.architectures` cites them). Nothing is downloaded: the
models are built on the device with random weights, which cost exactly what trained ones do.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

# The configs are declared once, with the architectures the memory plan counts.
from pipelines.models.architectures import (  # noqa: F401
    FLUX_TRANSFORMER,
    FLUX_VAE,
    MLP_RATIO,
    T5_TOKENS,
    image_tokens,
)

SIGLIP_TOKENS = 729  # Redux appends (384 / 14)^2 image tokens to the T5 tokens


def _linear(tokens: int, n_in: int, n_out: int) -> int:
    return 2 * tokens * n_in * n_out  # a multiply and an add per weight per token


def transformer_flops(config: dict, image: int, text: int, batch: int = 1) -> int:
    """Matmul FLOPs of one FluxTransformer2DModel forward over `image` + `text` tokens
    (elementwise work, norms and RoPE left out: they do not run on the tensor cores).
    FLUX.1-dev at 1024x1024 (4096 + 512 tokens): about 74 TFLOP."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image + text
    attention = 2 * 2 * tokens * tokens * dim  # Q·Kᵀ and P·V over the joint sequence
    double = (
        _linear(tokens, dim, 3 * dim)  # Q, K, V of both streams
        + attention
        + _linear(tokens, dim, dim)  # to_out and to_add_out
        + _linear(tokens, dim, MLP_RATIO * dim) + _linear(tokens, MLP_RATIO * dim, dim)  # ff and ff_context
        + 2 * _linear(1, dim, 6 * dim)  # the two AdaLayerNormZero modulations
    )
    single = (
        _linear(tokens, dim, 3 * dim) + _linear(tokens, dim, MLP_RATIO * dim) + attention
        + _linear(tokens, (1 + MLP_RATIO) * dim, dim)  # proj_out over [attention, mlp]
        + _linear(1, dim, 3 * dim)
    )
    embeddings = (
        _linear(image, config["in_channels"], dim) + _linear(text, config["joint_attention_dim"], dim)
        + (2 if config["guidance_embeds"] else 1) * (_linear(1, 256, dim) + _linear(1, dim, dim))  # time, guidance
        + _linear(1, config["pooled_projection_dim"], dim) + _linear(1, dim, dim)  # pooled CLIP
    )
    output = _linear(1, dim, 2 * dim) + _linear(image, dim, config["patch_size"] ** 2 * config["in_channels"])
    blocks = config["num_layers"] * double + config["num_single_layers"] * single
    return batch * (blocks + embeddings + output)


@contextmanager
def _created_as(device: torch.device, dtype: torch.dtype):
    """Create tensors on `device` in `dtype` from the start: a 12B model never exists in float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def random_transformer(device: torch.device, dtype: torch.dtype, seed: int = 0, config: dict = FLUX_TRANSFORMER):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    with _created_as(device, dtype):
        return FluxTransformer2DModel(**config).eval().requires_grad_(False)


def random_vae(device: torch.device, dtype: torch.dtype, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    with _created_as(device, dtype):
        return AutoencoderKL(**FLUX_VAE).eval().requires_grad_(False)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                       repeats: int = 25) -> float:
    """Measured dense matmul throughput of this GPU: the ceiling a transformer forward can reach."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):  # cuBLAS picks its kernel, clocks ramp up
        torch.mm(a, b, out=out)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1000) / 1e12
