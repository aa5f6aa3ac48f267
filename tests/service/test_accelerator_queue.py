"""The one line in front of the accelerator: arrival order, its bound, cancelling while waiting."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.accelerator_queue import AcceleratorQueue
from pipelines.errors import GenerationCancelled, ServerBusy


def run_in_turn(line: AcceleratorQueue, ticket, order: list, name: str, hold: float = 0.05) -> threading.Thread:
    def take_turn():
        line.wait_turn(ticket)
        order.append(name)
        time.sleep(hold)
        line.release(ticket)

    thread = threading.Thread(target=take_turn)
    thread.start()
    return thread


def test_turns_follow_arrival_not_joining_order():
    line = AcceleratorQueue(max_waiting=8)
    now = time.monotonic()
    # Joined out of order (a page request validated earlier joins a moment later).
    tickets = {"b": line.join(now + 2), "a": line.join(now + 1), "c": line.join(now + 3)}
    order: list[str] = []
    threads = [run_in_turn(line, ticket, order, name) for name, ticket in tickets.items()]
    for thread in threads:
        thread.join(5)
    assert order == ["a", "b", "c"]


def test_the_bound_counts_the_one_running_and_every_reservation():
    line = AcceleratorQueue(max_waiting=2)
    running = line.join(time.monotonic())
    line.wait_turn(running)
    assert line.reserve()  # a page request validated, not yet joined
    line.join(time.monotonic())
    with pytest.raises(ServerBusy):
        line.join(time.monotonic())
    assert not line.reserve()
    line.join(time.monotonic(), reserved=True)  # the reserved one takes its place
    line.join(time.monotonic(), force=True)  # a job accepted before a restart is never refused
    assert line.counts() == {"waiting": 3, "running": 1}


def test_an_unclaimed_reservation_lapses():
    line = AcceleratorQueue(max_waiting=0, hold_seconds=0.2)
    assert line.reserve() and not line.reserve()
    time.sleep(0.25)
    assert line.reserve()


def test_cancel_while_waiting_leaves_the_line_and_reports_places():
    line = AcceleratorQueue(max_waiting=4)
    running = line.join(time.monotonic())
    line.wait_turn(running)
    waiting = line.join(time.monotonic())
    cancel, places = threading.Event(), []
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(GenerationCancelled):
        line.wait_turn(waiting, cancel, on_wait=lambda ahead, seconds: places.append(ahead))
    assert places[0] == 0 and line.counts() == {"waiting": 0, "running": 1}


def test_estimates_come_from_measured_requests():
    line = AcceleratorQueue(max_waiting=4)
    first = line.join(time.monotonic(), work=2.0)
    line.wait_turn(first)
    time.sleep(0.2)
    line.release(first)  # 0.1 s per unit of work
    running = line.join(time.monotonic(), work=10.0)
    line.wait_turn(running)
    waiting = line.join(time.monotonic(), work=1.0)
    seen = []
    cancel = threading.Event()
    threading.Timer(0.15, cancel.set).start()
    with pytest.raises(GenerationCancelled):
        line.wait_turn(waiting, cancel, on_wait=lambda ahead, seconds: seen.append(seconds))
    assert 0.5 < seen[0] <= 1.0  # what the running one has left: about 1 s of its 10 units


def test_with_two_accelerators_two_run_at_once_in_arrival_order():
    line = AcceleratorQueue(max_waiting=1, max_running=2)
    now = time.monotonic()
    first, second, third = line.join(now + 1), line.join(now + 2), line.join(now + 3)
    with pytest.raises(ServerBusy):  # two running (or about to) and one waiting: full
        line.join(now + 4)
    line.wait_turn(first)
    line.wait_turn(second)
    assert line.counts() == {"waiting": 1, "running": 2}
    done = threading.Event()
    waiting = threading.Thread(target=lambda: (line.wait_turn(third), done.set()))
    waiting.start()
    assert not done.wait(0.3)  # no third accelerator
    line.release(second)
    assert done.wait(5)
    waiting.join(5)
