"""One image on several GPUs: diffusers' context parallelism for a worker given N devices.

Each of N rank processes holds the whole FluxPipeline. The transformer's CP hooks
(`FluxTransformer2DModel._cp_plan`) give each rank 1/N of the image and text tokens; Ulysses
attention swaps tokens for heads with an all-to-all, so every rank attends over the whole
sequence for its share of the heads, and `proj_out` gathers the tokens again. Every rank
therefore ends each step with the same full latents and decodes the same image. All ranks must
run the same call with the same noise (a seeded CPU generator), or their collectives pair up
wrongly. Rank 0 gets each request and hands it to the others with `broadcast_request`.

On CPU (gloo) only Ulysses works, and the tests check it against one process. Ring attention
merges the partial results using the attention's log-sum-exp. The native SDPA backend, which
is the only one on CPU, does not return it, so diffusers raises "Native attention does not
support return_lse=True". On CUDA, ring needs an attention backend that returns it, by
diffusers' source `_native_cudnn`, `_native_flash`, `flash` or `sage` (bf16/fp16; set with
`transformer.set_attention_backend`). Nothing here has run on GPUs yet.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

KINDS = ("ulysses", "ring")
TEXT_TOKENS = 512  # FluxPipeline's max_sequence_length: T5 tokens per prompt
PIXELS_PER_TOKEN = 16  # VAE downscale 8, then 2x2 latent patches


def parallel_config(degree: int, kind: str = "ulysses"):
    """diffusers' ContextParallelConfig that splits one image over `degree` ranks with `kind`
    attention. The `ulysses_anything` mode (for uneven splits) stays off: on gloo it fails in
    all_gather ("ProcessGroupGloo::allgather: invalid tensor size"); `split_problem` says
    which requests need it."""
    from diffusers import ContextParallelConfig

    if kind not in KINDS:
        raise ValueError(f"context parallelism kind must be one of {KINDS}, not {kind!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2:
        raise ValueError(f"context parallelism needs a degree of at least 2 ranks, not {degree!r}")
    return ContextParallelConfig(**{f"{kind}_degree": degree})


def process_group_backend(device: torch.device) -> str:
    """nccl between GPUs; gloo between CPU processes (nccl has no CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def image_tokens(width: int, height: int) -> int:
    """The transformer's image sequence length for a width x height output."""
    return (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)


def split_problem(degree: int, *, heads: int, image_tokens: int, text_tokens: int = TEXT_TOKENS,
                  kind: str = "ulysses") -> str | None:
    """Why an image can't be split over `degree` ranks, or None if it can. diffusers only
    shards each sequence into equal parts (an AssertionError otherwise), and Ulysses gives
    each rank heads / degree whole heads."""
    if kind == "ulysses" and heads % degree:
        return f"{heads} attention heads don't split evenly over {degree} ranks"
    for name, count in (("image", image_tokens), ("text", text_tokens)):
        if count % degree:
            return f"{count} {name} tokens don't split evenly over {degree} ranks"
    return None


def attention_backend(transformer) -> str:
    """The attention backend the transformer's processors dispatch to (diffusers' default:
    "native", that is torch SDPA)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            if processor._attention_backend is not None:
                return str(getattr(processor._attention_backend, "value", processor._attention_backend))
            break
    return _AttentionBackendRegistry.get_active_backend()[0].value


@contextlib.contextmanager
def _cpu_counted_as_one_device():
    """diffusers 0.42.1 records each rank's device as `rank % torch.accelerator.device_count()`
    (ModelMixin._resolve_parallel_config). Without an accelerator that is `rank % 0`, a
    ZeroDivisionError. The recorded device is never read again, so on such a machine the CPU
    counts as one device while parallelism is enabled."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    real = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def enable_context_parallel(transformer, config) -> None:
    """Install `config` on a loaded transformer, across the whole initialised default process
    group, so that every rank works on the one image. Raises before any request for the
    set-ups that could only fail later, inside the first denoising step."""
    if not dist.is_initialized():
        raise RuntimeError("initialise the process group (init_process_group) on every rank first")
    degree = config.ring_degree * config.ulysses_degree
    if degree != dist.get_world_size():
        raise ValueError(f"degree {degree} must equal the process group's {dist.get_world_size()} ranks")
    kind = "ring" if config.ring_degree > 1 else "ulysses"
    # The heads and the text split the same for every request (the image: per request).
    problem = split_problem(degree, heads=transformer.config.num_attention_heads, image_tokens=0, kind=kind)
    if problem:
        raise ValueError(problem)
    if kind == "ring" and attention_backend(transformer) == "native":
        raise ValueError("ring attention needs the log-sum-exp, which the native SDPA backend does not return: "
                         "on CUDA set e.g. transformer.set_attention_backend('_native_cudnn'); on CPU use ulysses")
    with _cpu_counted_as_one_device():
        transformer.enable_parallelism(config=config)


def broadcast_request(request: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's request, on every rank: rank 0 passes it (None: stop), the others pass None."""
    box = [request if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
