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
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from ray import cloudpickle  # what Ray sends requests with: the frozen requests' mappingproxy fields too

from deploy.worker_loras import ShippedLora, WorkerLoras
from pipelines.errors import GenerationCancelled, GenerationError
from pipelines.models.acceleration import request_cache_kind
from pipelines.models.context_parallel import broadcast_request, image_tokens, parallel_config, process_group_backend
from pipelines.models.context_parallel import split_problem as token_split_problem
from pipelines.service import time_limit_error

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
    """Rank 1..N-1: build the same playground, then take each message rank 0 broadcasts as
    rank 0 takes it (`RankGroup.run`, `RankGroup.load_lora`), until None."""
    from deploy.worker_playground import parsed_flags, scratch_folder, worker_playground

    exit_with(parent_pid)
    join_group(rank, degree, port)
    args = parsed_flags(flags)
    if torch.cuda.is_available():
        args.device = f"cuda:{rank}"
    playground = worker_playground(args, parallel_config(degree), time_limit_seconds=0)
    loras = WorkerLoras(playground.manager, scratch_folder(f"flux-rank{rank}-loras-"))
    while (box := broadcast_request(None)) is not None:
        message = cloudpickle.loads(box["pickled"])
        if message["kind"] == "load_lora":
            agree(attempt(lambda: (loras.take_up(message["loras"], ()), loras.load(message["lora"]))) is None)
            continue
        request = message["request"]
        if not agree(attempt(lambda: loras.take_up(message["loras"], request.loras)) is None):
            continue
        attempt(lambda: playground.generate_here(request, message["request_id"], None, AgreedStop()))
        agree(True)  # the run's end: every rank meets here, whatever its own run did
    dist.destroy_process_group()


def attempt(work) -> Exception | None:
    """`work()`'s error, or None: a follower's failures are rank 0's too, which reports them."""
    try:
        work()
    except Exception as error:  # noqa: BLE001
        log.debug("this rank's part failed: %s", error, exc_info=True)
        return error
    return None


def agree(ok: bool) -> bool:
    """Whether every rank is ok (each rank says so at the same point)."""
    flag = torch.tensor([1 if ok else 0], device=rank_device(dist.get_rank()))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class RankGroup:
    """Rank 0's side: the followers, and the broadcast of each request to them."""

    def __init__(self, flags: str | list[str], degree: int):
        if torch.cuda.is_available() and torch.cuda.device_count() < degree:
            raise RuntimeError(f"context_parallel {degree} needs {degree} GPUs; this worker has "
                               f"{torch.cuda.device_count()} (give FluxWorker num_gpus: {degree})")
        self.degree = degree
        self.broken: str | None = None
        self.loras_differ = False  # a LoRA take-up failed on some rank: the ranks may hold different ones
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

    def run(self, playground, loras: WorkerLoras, request, request_id: str, listed: dict[str, ShippedLora],
            on_step, cancel: threading.Event, time_limit_seconds: float):
        """Run one request on every rank; rank 0's Generated. Anything refused is refused
        before the followers hear of it; after that, each stage ends with all ranks agreeing."""
        request = self.runnable(request, playground.manager)
        # The followers hold what rank 0 holds, unless a take-up failed somewhere: then every
        # file the request names goes again, rather than each one with every request.
        named = [name for name, _ in request.loras]
        needed = named if self.loras_differ else loras.missing(listed, request.loras)
        self.broadcast({"kind": "generate", "request": request, "request_id": request_id,
                        "loras": with_bytes(listed, needed)})
        failure = attempt(lambda: loras.take_up(listed, request.loras))
        self.loras_differ = not agree(failure is None)
        if self.loras_differ:
            raise failure or RuntimeError("another rank could not load the request's LoRAs")
        stop = AgreedStop(cancel, time_limit_seconds)
        try:
            return playground.generate_here(request, request_id, on_step, stop)
        except GenerationCancelled:
            if stop.timed_out:
                raise time_limit_error(time_limit_seconds) from None
            raise
        finally:
            self.settle()

    def load_lora(self, loras: WorkerLoras, shipped: ShippedLora, listed: dict[str, ShippedLora]) -> dict:
        """Load a LoRA on every rank (after dropping what the ingress no longer lists)."""
        self.broadcast({"kind": "load_lora", "lora": with_bytes({shipped.name: shipped}, [shipped.name])[shipped.name],
                        "loras": with_bytes(listed, [])})
        status: dict = {}
        failure = attempt(lambda: (loras.take_up(listed, ()), status.update(loras.load(shipped))))
        self.loras_differ = not agree(failure is None)
        if self.loras_differ:
            raise failure or RuntimeError(f"another rank could not load {shipped.name}")
        return status

    def runnable(self, request, manager):
        """The request as the ranks can run it, or a GenerationError saying why not: the image
        must split evenly, and First Block Cache (which decides per rank whether to skip the
        remaining blocks, from its own tokens) gives way to TaylorSeer (a fixed schedule)."""
        heads = manager.component("transformer").config.num_attention_heads
        tokens = image_tokens(request.width, request.height)
        problem = token_split_problem(self.degree, heads=heads, image_tokens=tokens)
        if problem:
            raise GenerationError(f"This worker splits each image over {self.degree} GPUs, and {problem}; "
                                  "choose another width or height.", title="Not available on this worker")
        requested = None if request.step_cache == "auto" else request.step_cache
        if request_cache_kind(manager.acceleration, requested) == "first_block":
            note = (f"step_cache first_block ran as taylorseer: this worker splits each image over {self.degree} "
                    "GPUs, and First Block Cache would decide differently on each")
            request = replace(request, step_cache="taylorseer", warnings=(*request.warnings, note))
        return request

    def settle(self) -> None:
        """Every rank meets after a run. A rank that failed alone inside a collective (out of
        memory on its GPU) leaves the group out of step, and this fails too: the worker is
        then broken, its health check says so, and Serve starts it again."""
        try:
            agree(True)
        except Exception as error:  # noqa: BLE001
            self.broken = f"the ranks are out of step ({type(error).__name__}: {error})"
            raise GenerationError(f"This worker's GPUs lost each other ({error}); it is being restarted.",
                                  title="Worker restarting") from None

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send rank 0's next request to the followers (who run it as rank 0 does)."""
        broadcast_request({"pickled": cloudpickle.dumps(message)})

    def problem(self) -> str | None:
        """Why the group cannot run requests any more (a follower gone, out of step), or None."""
        gone = [follower.name for follower in self.followers if not follower.is_alive()]
        return f"rank processes gone: {', '.join(gone)}" if gone else self.broken

    def close(self) -> None:
        for follower in self.followers:
            follower.terminate()


def with_bytes(loras: dict[str, ShippedLora], names: list[str]) -> dict[str, ShippedLora]:
    """The LoRA list for the followers, who are not Ray workers: the files of `names` (the
    ones they lack, as rank 0 lacks them) read from the object store, the others left out."""
    import ray

    return {name: replace(lora, data=ray.get(lora.data) if name in names else None) for name, lora in loras.items()}
