"""What Gradio and gradio_client cost on their own: an endpoint of the playground's shape that
does no work.

    python -m bench.gradio_floor --port 7870

`/text_to_image(width, height, num_inference_steps, live_preview)` streams what the served
text-to-image endpoint streams, with every file made in advance: a gallery holding one
preview (a PIL image Gradio encodes as JPEG, at the preview size) at the steps where the app
previews, then a gallery holding one PNG of the requested size (noise, written at the app's
PNG level, as the demo family's images are), the seed and an info dict. A request here costs
only the queue, the messages, Gradio's cache copies and the client's downloads: the floor
under any served request of that shape, with nothing of the playground in it.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from pipelines.imaging.images import encode_image
from pipelines.imaging.previews import preview_size, should_preview
from presets import PRESETS

FOLDER = Path(tempfile.mkdtemp(prefix="gradio-floor-"))


@functools.lru_cache(maxsize=8)
def noise_png(width: int, height: int) -> str:
    path = FOLDER / f"{width}x{height}.png"
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(encode_image(Image.fromarray(pixels), "png", quality=100))
    return str(path)


@functools.lru_cache(maxsize=8)
def noise_preview(width: int, height: int) -> Image.Image:
    side_x, side_y = preview_size(height, width, PRESETS.preview_max_side)
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (side_y, side_x, 3), dtype=np.uint8))


def text_to_image(width: int, height: int, num_inference_steps: int, live_preview: bool):
    width, height, steps = int(width), int(height), int(num_inference_steps)
    final = noise_png(width, height)  # made before the first request is timed: the bench warms up
    for step in range(steps):
        if live_preview and should_preview(step, steps, PRESETS.preview_every_steps):
            yield [(noise_preview(width, height), f"preview · step {step + 1}/{steps}")], 1, {"preview": True}
    yield [(final, "demo · seed 1")], 1, {"seeds": [1]}


def build() -> gr.Blocks:
    with gr.Blocks() as demo:
        inputs = [gr.Number(label="width"), gr.Number(label="height"), gr.Number(label="steps"),
                  gr.Checkbox(label="live_preview")]
        outputs = [gr.Gallery(format="jpeg"), gr.Number(), gr.JSON()]
        gr.Button().click(text_to_image, inputs, outputs, api_name="text_to_image")
    return demo.queue()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    build().launch(server_name="127.0.0.1", server_port=parser.parse_args().port, quiet=True,
                   allowed_paths=[str(FOLDER)])
