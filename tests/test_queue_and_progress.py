"""One accelerator for all tabs: requests queue one behind another, report how long they
waited, and show step progress while they run."""

from __future__ import annotations

import time

from conftest import EXAMPLE_BIRD, FAST, result_images
from gradio_client import handle_file


def test_requests_from_different_tabs_run_one_at_a_time_and_report_their_wait(client):
    slow = {"prompt": "a fox", "image_size": "square_hd", "num_inference_steps": 12, "seed": 1}
    first = client.submit(**slow, api_name="/text_to_image")
    time.sleep(0.3)
    second = client.submit(image=handle_file(EXAMPLE_BIRD), prompt="a fox", **FAST, api_name="/kontext_edit")
    first_info, second_info = first.result()[2], second.result()[2]
    # The second waited for the whole of the first: they never ran at once.
    assert second_info["timings"]["queued_ms"] >= 0.8 * first_info["timings"]["executed_ms"]
    assert result_images(second.result())[0].size == (256, 256)


def test_progress_reports_denoising_steps(client):
    job = client.submit(prompt="a fox", image_size="square_hd", num_inference_steps=20, num_images=2,
                        seed=3, api_name="/text_to_image")
    seen = []
    while not job.done():
        progress = job.status().progress_data
        if progress:
            seen.append((progress[0].index, progress[0].length, progress[0].unit))
        time.sleep(0.02)
    job.result()
    assert seen, "no progress update was seen"
    assert all(length == 40 and unit == "steps" for _, length, unit in seen), seen
    assert len({index for index, _, _ in seen}) > 1
