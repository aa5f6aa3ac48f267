"""The one line in front of the accelerator.

Every request, from the page, gradio_client or any REST API, sync or async, takes a ticket
when it arrives and runs when its ticket is first in arrival order and the accelerator is
free. The line is bounded: beyond `max_waiting` tickets behind the one running, a request is
refused as busy at once, whichever way it came in.

The page validates a request before Gradio starts its endpoint, a few milliseconds later: its
validator *reserves* a place, which the endpoint's ticket then takes, so that a burst of
arrivals cannot all pass the check before any of them is counted. A reservation nobody takes
(the browser went away) lapses after `hold_seconds`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.errors import GenerationCancelled, ServerBusy

# How often a waiting request looks at its cancel flag and reports its place.
WAIT_POLL_SECONDS = 0.1
# Seconds of accelerator time per unit of work (a step of one 1024² image) until one is measured.
FIRST_GUESS_SECONDS_PER_UNIT = 1.0

# (requests ahead, estimated seconds until this one starts or None) while a request waits.
WaitCallback = Callable[[int, float | None], None]


@dataclass(order=True)
class Ticket:
    """A place in the line: ordered by arrival, then by when it was taken."""

    arrival: float
    number: int
    work: float = field(default=1.0, compare=False)  # steps x images x megapixels: for estimates
    started: float | None = field(default=None, compare=False)


def request_work(num_inference_steps: int, num_images: int, width: int, height: int) -> float:
    """A request's accelerator work in steps of one 1024x1024 image, for wait estimates."""
    return num_inference_steps * num_images * (width * height) / (1024 * 1024)


class AcceleratorQueue:
    def __init__(self, max_waiting: int, hold_seconds: float = 2.0, max_running: int = 1):
        self.max_waiting = max_waiting
        self.max_running = max_running  # accelerators behind the line (Ray Serve: its workers)
        self.hold_seconds = hold_seconds
        self._changed = threading.Condition()
        self._waiting: list[Ticket] = []  # sorted: the first is next
        self._running: list[Ticket] = []
        self._reservations: list[float] = []  # when each was made
        self._numbers = itertools.count()
        self._seconds_per_unit: float | None = None  # measured on finished requests

    # -- joining -----------------------------------------------------------------------------

    def reserve(self) -> bool:
        """Hold a place for a request about to join (the page's validator); False when full."""
        with self._changed:
            self._lapse_reservations()
            if self._room() <= 0:
                return False
            self._reservations.append(time.monotonic())
            return True

    def join(self, arrival: float, work: float = 1.0, reserved: bool = False, force: bool = False) -> Ticket:
        """A ticket for a request that arrived at `arrival` (time.monotonic()). `reserved`: it
        takes a place `reserve` held; `force`: it is let in even when the line is full (a job
        the server accepted before a restart). Raises ServerBusy when there is no room."""
        with self._changed:
            self._lapse_reservations()
            if reserved and self._reservations:
                self._reservations.pop(0)
            elif not force and self._room() <= 0:
                raise ServerBusy(len(self._waiting))
            ticket = Ticket(arrival, next(self._numbers), work)
            self._waiting.append(ticket)
            self._waiting.sort()
            self._changed.notify_all()
            return ticket

    def wait_turn(self, ticket: Ticket, cancel: threading.Event | None = None,
                  on_wait: WaitCallback | None = None) -> None:
        """Block until `ticket` is first and the accelerator is free, then hold it. Raises
        GenerationCancelled (and leaves the line) when `cancel` is set while waiting."""
        reported = None
        with self._changed:
            while not (len(self._running) < self.max_running and self._waiting and self._waiting[0] is ticket):
                if cancel is not None and cancel.is_set():
                    self._waiting.remove(ticket)
                    self._changed.notify_all()
                    raise GenerationCancelled()
                if on_wait is not None:
                    place = (self._waiting.index(ticket), self._estimate(ticket))
                    if place != reported:
                        reported = place
                        on_wait(*place)
                self._changed.wait(WAIT_POLL_SECONDS)
            self._waiting.pop(0)
            ticket.started = time.monotonic()
            self._running.append(ticket)

    def release(self, ticket: Ticket) -> None:
        """The accelerator is free again; `ticket`'s time teaches the estimates."""
        with self._changed:
            if ticket in self._running:
                self._running.remove(ticket)
                if ticket.started is not None and ticket.work > 0:
                    measured = (time.monotonic() - ticket.started) / ticket.work
                    known = self._seconds_per_unit
                    self._seconds_per_unit = measured if known is None else 0.7 * known + 0.3 * measured
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._changed.notify_all()

    # -- reading -----------------------------------------------------------------------------

    def position(self, ticket: Ticket) -> int | None:
        """How many run before `ticket` (0: next), or None once it runs or left."""
        with self._changed:
            return self._waiting.index(ticket) if ticket in self._waiting else None

    def counts(self) -> dict[str, int]:
        """{"waiting": tickets in line, "running": 0 up to max_running}."""
        with self._changed:
            return {"waiting": len(self._waiting), "running": len(self._running)}

    # -- inside the lock ---------------------------------------------------------------------

    def _room(self) -> int:
        """Places left: `max_waiting` behind the ones running (or about to run)."""
        taken = len(self._waiting) + len(self._running) + len(self._reservations)
        return self.max_waiting + self.max_running - taken

    def _lapse_reservations(self) -> None:
        now = time.monotonic()
        self._reservations = [made for made in self._reservations if now - made < self.hold_seconds]

    def _estimate(self, ticket: Ticket) -> float | None:
        """Seconds until `ticket` starts: what the running requests have left, and the work
        ahead, shared by the `max_running` accelerators."""
        rate = self._seconds_per_unit or FIRST_GUESS_SECONDS_PER_UNIT
        ahead = self._waiting[: self._waiting.index(ticket)]
        seconds = sum(other.work for other in ahead) * rate
        now = time.monotonic()
        seconds += sum(max(0.0, running.work * rate - (now - running.started))
                       for running in self._running if running.started is not None)
        seconds /= self.max_running
        return round(seconds, 1) if self._seconds_per_unit is not None else None
