"""One worker, several GPUs: the Serve replica (rank 0) and the N-1 follower processes it
starts run every request together, each FLUX transformer split over them by context
parallelism (pipelines/models/context_parallel.py).

Every rank holds the same manager and runs the same `generate_here` call on the same request,
so their collectives pair up: rank 0 broadcasts each request (and the LoRA files a request
needs and the ranks lack) before running it, and only rank 0's images are kept. A stop (a
cancel, the time limit) is agreed at each step, so that all ranks stop at the same one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ray import cloudpickle  # what Ray sends requests with: the frozen requests' mappingproxy fields too

from deploy.worker_loras import ShippedLora, WorkerLoras
from pipelines.models.context_parallel import broadcast_request, image_tokens, parallel_config, process_group_backend
from pipelines.models.context_parallel import split_problem as token_split_problem

log = logging.getLogger("flux_playground")

# A rank that fails alone (out of memory on its GPU) leaves the others waiting in a collective:
# they give up after this, the worker's health check fails, and Serve starts it again.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def rank_device(rank: int) -> torch.device:
    """The rank's own GPU of those Ray gave the replica (CUDA_VISIBLE_DEVICES), or the CPU."""
    return torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")


def join_group(rank: int, degree: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = rank_device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before nccl, so each rank talks from its own GPU
    dist.init_process_group(process_group_backend(device), rank=rank, world_size=degree, timeout=COLLECTIVE_TIMEOUT)


class AgreedStop:
    """The run's stop flag as `generate_here` reads it once per step: every rank reads it at
    the same step, and all see it set when rank 0's `cancel` is set or its deadline passed."""

    def __init__(self, cancel: threading.Event | None = None, time_limit_seconds: float = 0):
        self.cancel = cancel  # rank 0's; None on the followers
        self.deadline = time.monotonic() + time_limit_seconds if time_limit_seconds else None
        self.timed_out = False

    def is_set(self) -> bool:
        timed_out = self.deadline is not None and time.monotonic() > self.deadline
        local = (self.cancel is not None and self.cancel.is_set()) or timed_out
        flag = torch.tensor([1 if local else 0], device=rank_device(dist.get_rank()))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.timed_out = timed_out
        return bool(flag.item())


def exit_with(parent_pid: int) -> None:
    """A follower ends when its replica does, even one killed outright (it holds a GPU)."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-replica").start()


def follower_main(rank: int, degree: int, port: int, flags: str | list[str], parent_pid: int) -> None:
    """Rank 1..N-1: build the same playground, then run what rank 0 broadcasts until None."""
    from deploy.worker_playground import parsed_flags, worker_playground

    exit_with(parent_pid)
    join_group(rank, degree, port)
    args = parsed_flags(flags)
    if torch.cuda.is_available():
        args.device = f"cuda:{rank}"
    playground = worker_playground(args, parallel_config(degree), time_limit_seconds=0)
    loras = WorkerLoras(playground.manager, Path(tempfile.mkdtemp(prefix=f"flux-rank{rank}-loras-")))
    while (box := broadcast_request(None)) is not None:
        message = cloudpickle.loads(box["pickled"])
        try:
            if message["kind"] == "load_lora":
                loras.load(message["lora"])
            else:
                request = message["request"]
                loras.take_up(message["loras"], request.loras)
                playground.generate_here(request, message["request_id"], None, AgreedStop())
        except Exception:  # noqa: BLE001 - rank 0 meets the same error and reports it
            log.debug("rank %d: the request failed here too", rank, exc_info=True)
    dist.destroy_process_group()


class RankGroup:
    """Rank 0's side: the followers, and the broadcast of each request to them."""

    def __init__(self, flags: str | list[str], degree: int):
        self.degree = degree
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.followers = [spawn.Process(target=follower_main, args=(rank, degree, port, flags, os.getpid()),
                                        daemon=True, name=f"flux-rank{rank}") for rank in range(1, degree)]
        for follower in self.followers:
            follower.start()
        join_group(0, degree, port)  # waits until every follower has joined

    @property
    def config(self):
        return parallel_config(self.degree)

    def split_problem(self, request, heads: int) -> str | None:
        """Why the request's image cannot be split over the ranks, or None."""
        return token_split_problem(self.degree, heads=heads, image_tokens=image_tokens(request.width, request.height))

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send rank 0's next request to the followers (who run it as rank 0 does)."""
        broadcast_request({"pickled": cloudpickle.dumps(message)})

    def problem(self) -> str | None:
        """Why the group cannot run requests any more (a follower gone), or None."""
        gone = [follower.name for follower in self.followers if not follower.is_alive()]
        return f"rank processes gone: {', '.join(gone)}" if gone else None

    def close(self) -> None:
        for follower in self.followers:
            follower.terminate()


def with_bytes(loras: dict[str, ShippedLora], names: list[str]) -> dict[str, ShippedLora]:
    """The LoRA list for the followers, who are not Ray workers: the files of `names` (the
    ones they lack, as rank 0 lacks them) read from the object store, the others left out."""
    import ray

    return {name: replace(lora, data=ray.get(lora.data) if name in names else None) for name, lora in loras.items()}
