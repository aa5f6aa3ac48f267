"""One accelerator for all tabs: requests queue one behind another, report how long they
waited, and show step progress while they run."""

from __future__ import annotations

import re
import time

from conftest import EXAMPLE_BIRD, FAST, result_images
from gradio_client import handle_file


def test_requests_from_different_tabs_run_one_at_a_time_and_report_their_wait(client):
    slow = {"prompt": "a fox", "image_size": "square_hd", "num_inference_steps": 12, "seed": 1}
    sent = time.monotonic()
    first = client.submit(**slow, api_name="/text_to_image")
    time.sleep(0.3)
    second = client.submit(image=handle_file(EXAMPLE_BIRD), prompt="a fox", **FAST, api_name="/kontext_edit")
    apart_ms = (time.monotonic() - sent) * 1000  # about this far apart they arrived
    first_info, second_info = first.result()[2], second.result()[2]
    # The second started only once the first had finished: they never ran at once. (submit()
    # sends from a thread of its own: the second may reach the server a little after it returns.)
    first_ended = first_info["timings"]["queued_ms"] + first_info["timings"]["executed_ms"]
    assert second_info["timings"]["queued_ms"] >= first_ended - apart_ms - 300
    assert result_images(second.result())[0].size == (256, 256)


def test_progress_reports_denoising_steps(client):
    job = client.submit(prompt="a fox", image_size="square_hd", num_inference_steps=20, num_images=2,
                        seed=3, api_name="/text_to_image")
    seen = []
    while not job.done():
        progress = job.status().progress_data
        if progress:
            seen.append((progress[0].index, progress[0].length, progress[0].unit, progress[0].desc))
        time.sleep(0.02)
    job.result()
    assert seen, "no progress update was seen"
    # Each image's own steps, and which image: "image 2 of 2 · step 13 of 20", not "33/40 steps".
    assert all(length == 20 and unit == "steps" for _, length, unit, _ in seen), seen
    assert all(desc == f"image {desc[6]} of 2 · step {index} of 20" for index, _, _, desc in seen), seen
    assert len({index for index, _, _, _ in seen}) > 1


def test_streaming_job_yields_previews_before_the_exact_final_image(client):
    from conftest import pixels

    request = {"prompt": "a fox", "image_size": "square", "num_inference_steps": 12, "num_images": 2, "seed": 21}
    job = client.submit(**request, api_name="/text_to_image")
    outputs = list(job)  # gradio_client iterates the generator's outputs as they arrive
    previews, final = outputs[:-1], outputs[-1]
    # 12 steps, a preview every 4 (never on the last step): steps 4 and 8 of each image.
    assert [(p[2]["image_index"], p[2]["step"]) for p in previews] == [(0, 4), (0, 8), (1, 4), (1, 8)]
    assert all(p[2]["preview"] and p[1] == 21 for p in previews)
    assert all("preview" in p[0][0]["caption"] for p in previews)
    assert result_images(previews[0])[0].size == (512, 512)
    assert "preview" not in final[2] and final[2]["seeds"] == [21, 22]
    # The final image is exact: the same as a request without previews.
    plain = client.predict(**request, live_preview=False, api_name="/text_to_image")
    assert all((pixels(a) == pixels(b)).all() for a, b in zip(result_images(final), result_images(plain)))


def test_previews_can_be_turned_off(client):
    job = client.submit(prompt="a fox", image_size="square", num_inference_steps=12, live_preview=False,
                        api_name="/text_to_image")
    assert len(list(job)) == 1


def test_previews_in_the_image_modes(client):
    job = client.submit(image=handle_file(EXAMPLE_BIRD), prompt="a red bird", num_inference_steps=8,
                        image_size="custom", width=512, height=256, api_name="/kontext_edit")
    outputs = list(job)
    assert len(outputs) == 2 and outputs[0][2]["preview"]
    assert result_images(outputs[0])[0].size == (512, 256)
    assert result_images(outputs[-1])[0].size == (512, 256)


def test_cancelling_a_job_stops_it_and_the_next_request_runs(client, playground):
    job = client.submit(prompt="a fox", image_size="square_hd", num_inference_steps=50, num_images=4,
                        api_name="/text_to_image")
    deadline = time.monotonic() + 30
    while not (job.status().progress_data or time.monotonic() > deadline):
        time.sleep(0.02)
    started = time.monotonic()
    job.cancel()
    # The accelerator is free again at the next step, long before the 200 steps (~10 s here)
    # would have finished.
    quick = client.predict(prompt="a fox", **FAST, seed=1, api_name="/text_to_image")
    assert quick[2]["timings"]["queued_ms"] < 2000 and time.monotonic() - started < 5
    assert result_images(quick)[0].size == (256, 256)


def test_waiting_jobs_see_their_place_in_the_one_line_and_an_estimate(base_url):
    from gradio_client import Client

    request = {"prompt": "a fox", "image_size": "square_hd", "num_inference_steps": 16, "live_preview": False,
               "api_name": "/text_to_image"}
    users = [Client(base_url, verbose=False) for _ in range(3)]
    jobs = [user.submit(**request) for user in users]
    waiting = set()  # the "Waiting: ..." texts seen
    while not all(job.done() for job in jobs):
        for job in jobs:
            progress = job.status().progress_data
            if progress and progress[0].desc and progress[0].desc.startswith("Waiting"):
                waiting.add(progress[0].desc)
        time.sleep(0.02)
    # Three requests, one accelerator: they waited in the service's line (where the REST APIs'
    # requests wait too), knowing their place, with an estimate learned from earlier requests.
    assert any("1 request ahead" in text or "2 requests ahead" in text for text in waiting), waiting
    assert any(re.search(r"about \d+ s", text) for text in waiting), waiting
    assert all(result_images(job.result())[0].size == (1024, 1024) for job in jobs)


def test_page_and_rest_requests_run_in_arrival_order(client, base_url):
    import requests

    slow = {"prompt": "a fox", "image_size": "square_hd", "num_inference_steps": 12, "live_preview": False}
    started = {}
    first = client.submit(**slow, seed=1, api_name="/text_to_image")
    time.sleep(0.3)
    rest = requests.post(base_url + "v2/black-forest-labs-flux-1-dev/run", timeout=30,
                         json={"input": {"prompt": "a fox", "width": 1024, "height": 1024, "num_inference_steps": 12,
                                         "seed": 2}}).json()
    time.sleep(0.3)
    last = client.submit(**slow, seed=3, api_name="/text_to_image")
    last_info = last.result()[2]
    status = requests.get(base_url + f"v2/black-forest-labs-flux-1-dev/status/{rest['id']}", timeout=30).json()
    started["page, first"] = first.result()[2]["timings"]
    started["rest"] = status
    # The REST job came between the two page requests: it ran after the first, the last after it.
    assert status["status"] == "COMPLETED"
    assert status["delayTime"] >= 0.8 * started["page, first"]["executed_ms"] - 300
    assert last_info["timings"]["queued_ms"] >= 0.8 * (started["page, first"]["executed_ms"] + status["executionTime"]) - 600


def test_the_served_queue_polls_every_10_ms_and_still_runs_requests_at_once(served):
    from ui.gradio_queue import PROGRESS_POLL_SECONDS, QUEUE_POLL_SECONDS

    client, _, _, server_app = served
    blocks = next(route.app.get_blocks() for route in server_app.routes if hasattr(getattr(route, "app", None), "get_blocks"))
    assert (blocks._queue.sleep_when_free, blocks._queue.progress_update_sleep_when_free) == (0.01, 0.05)
    assert (QUEUE_POLL_SECONDS, PROGRESS_POLL_SECONDS) == (0.01, 0.05)
    result = client.predict(prompt="a fox", **FAST, live_preview=False, api_name="/text_to_image")
    assert result[2]["timings"]["queued_ms"] < 1000 and result_images(result)[0].size == (256, 256)
