"""Gradio's queue, as the playground runs it: a bound on the requests waiting that holds during
a burst of arrivals, and idle polling that leaves the interpreter to the model."""

from __future__ import annotations

import threading
import time

import gradio as gr

from pipelines.modes.table import MODES

# Gradio's queue looks for new events every 1 ms and for progress every 10 ms, also while a
# request runs: an idle app used 2.2% of a core here, each wake-up taking the interpreter from
# the denoising thread. Every 10 ms (a request starts 5 ms later on average) and 50 ms (progress
# goes out at most every 0.25 s anyway) it used 0.9% (bench/RESULTS.md, "Serving overhead").
QUEUE_POLL_SECONDS = 0.01
PROGRESS_POLL_SECONDS = 0.05


def poll_queue_calmly(blocks: gr.Blocks) -> None:
    """Set the polling intervals of `blocks`' queue (after `blocks.queue(...)`)."""
    queue = blocks._queue  # Gradio has no public setting for these
    queue.sleep_when_free = QUEUE_POLL_SECONDS
    queue.progress_update_sleep_when_free = PROGRESS_POLL_SECONDS


class QueueGate:
    """Bounds the number of requests waiting in Gradio's queue.

    Gradio compares its queue with `max_size` before it runs an event's validator and adds
    the event after, so a burst of arrivals can all pass that check while they validate. The
    gate is asked from inside the validator and counts as waiting both the queue and the
    arrivals it admitted that the queue has not recorded yet (at most `hold_seconds` old, in
    case one never arrives)."""

    def __init__(self, max_waiting: int, hold_seconds: float = 2.0):
        self.max_waiting = max_waiting
        self.hold_seconds = hold_seconds
        self.blocks: gr.Blocks | None = None
        self._admitted: list[float] = []
        self._admitted_total = 0
        self._lock = threading.Lock()

    def attach(self, blocks: gr.Blocks) -> None:
        self.blocks = blocks

    def admit(self) -> bool:
        if self.blocks is None:
            return True
        queue = self.blocks._queue  # Gradio's queue: its length and its count of events recorded
        with self._lock:
            now = time.monotonic()
            self._admitted = [t for t in self._admitted if now - t < self.hold_seconds]
            recorded = sum(queue.events_recorded_per_fn.get(mode, 0) for mode in MODES)
            validating = min(len(self._admitted), max(0, self._admitted_total - recorded))
            if len(queue) + validating >= self.max_waiting:
                return False
            self._admitted.append(now)
            self._admitted_total += 1
            return True
