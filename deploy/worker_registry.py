"""What each FluxWorker replica is and holds, for `/status` at the ingress.

A Serve handle reaches *a* replica, never a chosen one, so the workers report themselves: to
one small actor per application, when they start, at each request's start and end, and at
each of Serve's health checks. The ingress reads it and tells live replicas from lost ones
by the replica actors Ray still has.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import ray
from ray import serve

log = logging.getLogger("flux_playground")


@ray.remote(num_cpus=0)
class WorkerRegistry:
    """The latest card of every worker replica of one application, live or not."""

    def __init__(self):
        self.cards: dict[str, dict[str, Any]] = {}

    def report(self, card: dict[str, Any]) -> None:
        self.cards[card["worker"]] = {**card, "reported_at": time.time()}

    def stopped(self, worker: str) -> None:
        """A replica Serve stopped on purpose (scaled down, redeployed): not a restart."""
        if worker in self.cards:
            self.cards[worker]["stopped"] = True

    def all(self) -> dict[str, dict[str, Any]]:
        return self.cards


def registry(application: str):
    """The application's registry actor, created by whoever asks first. Detached, so that it
    outlives an ingress or worker restart."""
    return WorkerRegistry.options(name=f"flux-playground-workers-{application}", namespace="flux-playground",
                                  get_if_exists=True, lifetime="detached").remote()


def device_name(device: str) -> str:
    """The device as `/status` shows it: "cuda:0 (NVIDIA H200)", or "cpu"."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def holdings(manager_status: dict[str, Any]) -> dict[str, Any]:
    """What a worker's manager holds: each loaded model's device, storage and bytes, the
    users' LoRAs on its transformer, and the bytes resident in all."""
    components = {name: {key: entry[key] for key in ("device", "stored_as", "bytes", "split_over") if key in entry}
                  for name, entry in manager_status["components"].items()}
    return {"components": components, "loras": sorted(manager_status["loras"]),
            "resident_bytes": manager_status["resident_bytes"]}


def worker_card(worker: str, actor_name: str, manager_status: dict[str, Any], counts: dict[str, Any]) -> dict:
    """One worker as `/status` lists it: where it runs, on what device, what it holds, and
    `counts` (requests served and cancelled, the request running now, when it started)."""
    return {
        "worker": worker,
        "actor": actor_name,
        "node": ray.get_runtime_context().get_node_id()[:12],
        "host": socket.gethostname(),
        "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
        "device": device_name(manager_status["device"]),
        "holds": holdings(manager_status),
        **counts,
    }


def live_actor_names() -> set[str]:
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)}


def workers_status(cards: dict[str, dict[str, Any]], live: set[str]) -> dict[str, Any]:
    """The cards of the live workers, the lost ones' names, and how many were lost (Serve
    started a replica in the place of each)."""
    alive = [card for card in cards.values() if card["actor"] in live]
    lost = [name for name, card in cards.items() if card["actor"] not in live and not card.get("stopped")]
    return {"workers": sorted(alive, key=lambda card: card["started_at"]), "lost": lost, "restarts": len(lost)}


def read_registry(application: str) -> dict[str, Any]:
    """`workers_status` now; empty when the registry cannot answer (so `/status` still does)."""
    try:
        return workers_status(ray.get(registry(application).all.remote(), timeout=5), live_actor_names())
    except Exception as error:  # noqa: BLE001 - a busy or restarting cluster: /status still answers
        log.warning("the worker registry did not answer: %s", error)
        return {"workers": [], "lost": [], "restarts": None}


def running_replicas(application: str, deployment: str = "FluxWorker") -> dict[str, int]:
    """Serve's count of the application's workers by state (RUNNING, STARTING…)."""
    try:
        found = serve.status().applications.get(application)
        if found is not None and deployment in found.deployments:
            return dict(found.deployments[deployment].replica_states)
    except Exception as error:  # noqa: BLE001 - the controller busy or restarting: /status still answers
        log.warning("serve.status() failed: %s", error)
    return {}
