"""Gradio's queue, as the playground runs it: idle polling that leaves the interpreter to the
model. (Requests wait for the accelerator in the service's one line, `AcceleratorQueue`,
together with the REST APIs' requests, not in Gradio's queue.)"""

from __future__ import annotations

import gradio as gr

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
