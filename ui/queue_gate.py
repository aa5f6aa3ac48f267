"""A bound on the requests waiting in Gradio's queue that holds during a burst of arrivals."""

from __future__ import annotations

import threading
import time

import gradio as gr

from pipelines.modes.table import MODES


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
