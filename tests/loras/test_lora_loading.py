"""Loading a LoRA says what it is doing and, when it cannot, what to do instead: its download's
progress, a time limit on downloads and hub lookups (against a slow local server), a message
for each mistake; and a request naming a LoRA that is not loaded points at the LoRAs tab,
naming its field once. Every test leaves no LoRA loaded and the server's settings as they were."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import torch
from conftest import FAST, call
from gradio_client.exceptions import AppError
from safetensors.torch import save_file

KOHYA = "tiny-kohya-style.safetensors"
TRICKLE_SECONDS = 0.25  # between the parts of a slow download
STALL_SECONDS = 20  # the most a stalled answer waits, so that a test of code without a time limit ends


@pytest.fixture
def no_loras_after(client):
    """Unloads whatever the test loaded."""
    yield
    for name in client.predict(api_name="/status")["loras"]:
        client.predict(name=name, api_name="/unload_lora")


@pytest.fixture
def lora_fetch(playground):
    """Sets the running app's LoRA time limit (and lets LoRA URLs point at this machine, as
    --allow-private-urls does) for one test."""
    policy = playground.lora_sources.fetch
    saved = policy.allow_private, policy.timeout_seconds

    def limit(seconds: float) -> None:
        policy.allow_private, policy.timeout_seconds = True, seconds

    yield limit
    policy.allow_private, policy.timeout_seconds = saved


@pytest.fixture
def slow_server(family):
    """A local HTTP server: /slow/<file> sends a demo LoRA in 8 parts, TRICKLE_SECONDS apart;
    /trickle/<file> sends a byte every TRICKLE_SECONDS; anything else (a hub API path) answers
    nothing until the test ends. None of them for longer than STALL_SECONDS."""
    data = (family["loras"] / KOHYA).read_bytes()
    ended = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if not self.path.startswith(("/slow/", "/trickle/")):
                ended.wait(STALL_SECONDS)
                self.send_error(503)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            part = len(data) // 8 + 1 if self.path.startswith("/slow/") else 1
            deadline = time.monotonic() + STALL_SECONDS
            for start in range(0, len(data), part):
                if ended.is_set() or time.monotonic() > deadline:
                    return
                self.wfile.write(data[start:start + part])
                self.wfile.flush()
                time.sleep(TRICKLE_SECONDS)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    ended.set()
    server.shutdown()


@pytest.fixture
def online_hub(monkeypatch):
    """The app's hub client online (the tests run with HF_HUB_OFFLINE=1) at another endpoint,
    as HF_ENDPOINT sets it, for one test. The app runs in this process, so this is its client."""
    from huggingface_hub import constants, hf_api

    def point_at(endpoint: str) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # list_repo_files is this object's

    return point_at


def load(client, source: str, name: str | None = None):
    return client.predict(source=source, name=name, api_name="/load_lora")


def test_a_download_reports_its_progress_then_loads(client, no_loras_after, lora_fetch, slow_server):
    lora_fetch(60)
    job = client.submit(source=f"{slow_server}/slow/{KOHYA}", name=None, api_name="/load_lora")
    stages = set()
    while not job.done():
        progress = job.status().progress_data
        stages.update(item.desc for item in progress or [])
        time.sleep(0.05)
    assert list(job.result()) == ["tiny-kohya-style"]
    assert any(stage.startswith(f"Downloading {KOHYA}: ") and stage.endswith(" of 32 KB") for stage in stages), stages


def refused_within(client, seconds: float, source: str, message: str) -> None:
    """Loading `source` is refused with `message` (a regex) within `seconds`, and loads nothing."""
    started = time.monotonic()
    with pytest.raises(AppError, match=message):
        load(client, source)
    assert time.monotonic() - started < seconds
    assert client.predict(api_name="/status")["loras"] == {}


def test_a_trickling_download_stops_at_the_time_limit(client, no_loras_after, lora_fetch, slow_server):
    lora_fetch(1.5)
    refused_within(client, 8, f"{slow_server}/trickle/{KOHYA}",
                   r"the download took longer than 1.5 s, this server's limit for fetching a LoRA "
                   r"\(--lora-time-limit\), and was stopped")


def test_a_hub_lookup_that_hangs_stops_at_the_time_limit(client, no_loras_after, lora_fetch, slow_server,
                                                         online_hub):
    lora_fetch(1.5)
    online_hub(slow_server)
    refused_within(client, 8, "user/repo", r"user/repo: the Hugging Face Hub lookup and download took longer than "
                                           r"1.5 s, .*--lora-time-limit.*or a URL instead")


def test_the_hub_without_network_says_at_once_what_to_do_instead(client, no_loras_after, online_hub):
    # As the tests run: the hub client is offline (HF_HUB_OFFLINE=1).
    refused_within(client, 5, "user/repo", r"^user/repo: no network to the Hugging Face Hub \(this server runs "
                                           r"offline, HF_HUB_OFFLINE=1\): use a file in the LoRA folder \(.*\) or "
                                           r"a URL instead$")
    # Online, on a machine whose DNS resolves nothing: said at once, not after the hub client's retries (23 s).
    online_hub("https://hub.invalid")
    refused_within(client, 5, "user/repo", r"^user/repo: no network to the Hugging Face Hub \(hub.invalid cannot "
                                           r"be resolved\): use a file in the LoRA folder")


def test_each_load_mistake_says_what_is_wrong(client, playground, no_loras_after):
    folder = playground.lora_sources.folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "no-lora.safetensors": {"proj.weight": torch.zeros(4, 4)},
        "for-sd.safetensors": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)},
        "for-a-bigger-flux.safetensors": {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4)},
    }
    for file, tensors in files.items():
        save_file(tensors, folder / file)
    (folder / "words.safetensors").write_text("not a safetensors file")
    mistakes = {
        "nothere.safetensors": r"^file not found in the LoRA folders: nothere.safetensors \(they hold: .*"
                               r"tiny-kohya-style.safetensors.*\); a hub repository is written user/repo",
        "no-lora.safetensors": r"^not a LoRA: no-lora.safetensors holds no LoRA weights",
        "for-sd.safetensors": r"^not a FLUX LoRA: for-sd.safetensors does not fit the FLUX.1 \[dev\] transformer "
                              r"\(a LoRA for another model\?\); load a LoRA made for FLUX.1 \[dev\]",
        "for-a-bigger-flux.safetensors": r"^not a LoRA for this server's FLUX.1 \[dev\] transformer: the weights "
                                         r"in for-a-bigger-flux.safetensors have other shapes than its layers",
        "words.safetensors": r"^words.safetensors is not a .safetensors file",
        "/etc/passwd": r"^/etc/passwd is outside the LoRA folders: local LoRAs are loaded only from the LoRA folders",
    }
    try:
        for source, message in mistakes.items():
            with pytest.raises(AppError, match=message):
                load(client, source)
        load(client, KOHYA)
        with pytest.raises(AppError, match=r"^a LoRA named 'tiny-kohya-style' is loaded already; unload it or "
                                           r"choose another name$"):
            load(client, "user/repo", name="tiny-kohya-style")  # said before any download
        with pytest.raises(AppError, match=r"^'ghost' is not loaded \(loaded: tiny-kohya-style\)$"):
            client.predict(name="ghost", api_name="/unload_lora")
    finally:
        for file in [*files, "words.safetensors"]:
            (folder / file).unlink()
    assert list(client.predict(api_name="/status")["loras"]) == ["tiny-kohya-style"]  # the mistakes loaded nothing


def test_an_unknown_lora_name_points_at_the_loras_tab_naming_its_field_once(client, base_url, no_loras_after):
    load(client, "tiny-style-lora")
    with pytest.raises(Exception) as raised:
        call(client, "/text_to_image", prompt="a lighthouse", **FAST, loras="tiny-x:0.5, tiny-style-lora")
    message = str(raised.value)
    assert ("- loras: 'tiny-x' is not loaded: load it in the LoRAs tab or with /load_lora "
            "(loaded: tiny-style-lora)") in message
    assert "loras: loras" not in message
    # fal's shape: the field is the error's loc, and its message does not name it again.
    body = {"prompt": "a lighthouse", "image_size": {"width": 256, "height": 256}, "num_inference_steps": 2}
    for loras, expected in (
            ([{"path": "tiny-style-lora", "scale": 9}], "the weight of 'tiny-style-lora' must be a number from -4 to 4"),
            ([{"path": "user/repo"}], "user/repo: no network to the Hugging Face Hub"),
            ([{"path": "tiny-x"}], "file not found in the LoRA folders: tiny-x")):
        response = requests.post(f"{base_url}fal-ai/flux-lora", json={**body, "loras": loras}, timeout=60)
        assert response.status_code == 422, response.text
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "loras"] and problem["msg"].startswith(expected), problem


def test_the_lora_time_limit_is_a_setting(playground, monkeypatch):
    import app

    assert app.parse_args([]).lora_time_limit == 300 == playground.lora_sources.fetch.timeout_seconds
    assert app.parse_args(["--lora-time-limit", "20"]).lora_time_limit == 20
    monkeypatch.setenv("FLUX_LORA_TIME_LIMIT", "45")
    assert app.parse_args([]).lora_time_limit == 45
