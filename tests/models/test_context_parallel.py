"""pipelines/models/context_parallel.py: one image split over two gloo processes on CPU (Ulysses attention)
draws the pixels one process draws, on the demo family; and the splits it refuses."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import free_port

from pipelines.models.context_parallel import (
    attention_backend,
    broadcast_request,
    enable_context_parallel,
    image_tokens,
    parallel_config,
    process_group_backend,
    split_problem,
)

REQUEST = {"prompt": "a fox in the snow", "width": 256, "height": 256, "num_inference_steps": 4,
           "guidance_scale": 3.5, "seed": 7, "output_type": "np"}
# On the [0, 1] pixel scale (1/255 is one 8-bit level). Measured here: 1.3e-6 to 1.5e-6. Ranks
# on different noise missed by 0.7; attention over one rank's tokens only would miss too.
TOLERANCE = 1e-4
RANKS = 2
SECONDS = 240


# A plain FluxPipeline on each rank; deploy/parallel_ranks.py runs the app's manager the same way.

def start_rank(model: str, *, kind: str = "ulysses", rank: int | None = None, world_size: int | None = None,
               torch_dtype: torch.dtype | None = None):
    """What each rank process runs first: join the process group (rank, world size and
    MASTER_ADDR / MASTER_PORT come from the arguments or torchrun's environment), take GPU
    LOCAL_RANK (else `rank`) where there are GPUs, and load the FluxPipeline from `model` with context
    parallelism on. Returns the pipeline, on its device."""
    rank = int(os.environ["RANK"]) if rank is None else rank
    world_size = int(os.environ["WORLD_SIZE"]) if world_size is None else world_size
    config = parallel_config(world_size, kind)  # a bad degree fails before anyone waits on the group
    local_rank = int(os.environ.get("LOCAL_RANK", rank))  # this node's GPU index (torchrun sets it)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before nccl, so each rank talks from its own GPU
    dist.init_process_group(process_group_backend(device), rank=rank, world_size=world_size)

    from diffusers import FluxPipeline

    dtype = torch_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe = FluxPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    enable_context_parallel(pipe.transformer, config)
    return pipe


def follow(run: Callable[[dict[str, Any]], Any]) -> None:
    """The loop of ranks 1..N-1: run each request rank 0 broadcasts, until it broadcasts None."""
    while (request := broadcast_request(None)) is not None:
        run(request)


def generate(pipe, request: dict[str, Any]):
    """One pipeline call for a request of FluxPipeline keyword arguments plus "seed". The
    noise comes from a CPU generator, so it is the same on every rank and device."""
    arguments = {key: value for key, value in request.items() if key != "seed"}
    generator = torch.Generator("cpu").manual_seed(int(request["seed"]))
    return pipe(generator=generator, **arguments)


def rank_process(rank: int, port: int, model: str, out: Path) -> None:
    """One rank (spawned, so module level): rank 0 sends REQUEST to rank 1 and saves its image;
    both record the token counts their first transformer block gets at each step."""
    torch.set_num_threads(1)  # two processes on a small machine
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    pipe = start_rank(model, rank=rank, world_size=RANKS)
    seen = []
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(
            [kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1]]),
        with_kwargs=True)
    try:
        if rank == 0:
            image = generate(pipe, broadcast_request(REQUEST)).images[0]
            broadcast_request(None)  # lets rank 1's loop end
            np.save(out / "image.npy", image)
        else:
            follow(lambda request: generate(pipe, request))
        (out / f"tokens-{rank}.json").write_text(json.dumps(seen))
    finally:
        # Together: a rank that tears gloo down while the other still talks aborts ("terminate
        # called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_ranks(model: Path, out: Path) -> None:
    """Both ranks, failing (not hanging) if one raises or the pair stalls."""
    import torch.multiprocessing as mp

    context = mp.spawn(rank_process, args=(free_port(), str(model), out), nprocs=RANKS, join=False)
    deadline = time.monotonic() + SECONDS
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish in {SECONDS} s")


def test_two_gloo_ranks_draw_the_one_process_image(family, tmp_path):
    from diffusers import FluxPipeline

    run_ranks(family["dev"], tmp_path)
    split = np.load(tmp_path / "image.npy")
    single = generate(FluxPipeline.from_pretrained(family["dev"], torch_dtype=torch.float32), REQUEST).images[0]

    assert split.shape == single.shape == (256, 256, 3)
    assert single.std() > 0.05, "the reference image is blank"
    assert float(np.abs(split - single).max()) <= TOLERANCE
    # Each rank really worked on half the sequence: 256 image and 512 text tokens in all.
    for rank in range(RANKS):
        seen = json.loads((tmp_path / f"tokens-{rank}.json").read_text())
        assert seen == [[128, 256]] * REQUEST["num_inference_steps"], f"rank {rank}"


def test_the_config_names_its_kind_and_degree():
    assert parallel_config(2).ulysses_degree == 2
    ring = parallel_config(4, "ring")
    assert (ring.ring_degree, ring.ulysses_degree) == (4, 1)
    for degree in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="degree"):
            parallel_config(degree)
    with pytest.raises(ValueError, match="kind"):
        parallel_config(2, "tensor")


def test_splits_that_do_not_divide_are_named():
    # FLUX.1-dev: 24 heads, 512 text tokens.
    assert image_tokens(1024, 1024) == 4096
    assert split_problem(2, heads=24, image_tokens=image_tokens(1024, 1024)) is None
    assert split_problem(8, heads=24, image_tokens=image_tokens(1024, 768)) is None
    assert "heads" in split_problem(5, heads=24, image_tokens=4000)
    assert split_problem(5, heads=24, image_tokens=4000, kind="ring") == "512 text tokens don't split evenly over 5 ranks"
    assert "225 image tokens" in split_problem(2, heads=24, image_tokens=image_tokens(240, 240))


def test_the_demo_transformer_attends_with_native_sdpa(family):
    """The backend enable_context_parallel refuses ring attention on (no log-sum-exp)."""
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(family["dev"], subfolder="transformer")
    assert attention_backend(transformer) == "native"
