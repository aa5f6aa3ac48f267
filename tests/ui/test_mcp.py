"""The app as an MCP server, driven by the official `mcp` client SDK over streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

from conftest import EXAMPLE_BIRD
from PIL import Image

GENERATION_TOOLS = {"text_to_image", "image_to_image", "kontext_edit", "redux_variation", "inpaint", "outpaint",
                    "control"}


def with_session(base_url: str, work):
    """Run `await work(session)` in an initialized MCP client session with the app."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main():
        async with streamablehttp_client(base_url + "gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(main())


def images_and_texts(result) -> tuple[list[Image.Image], list[str]]:
    images = [Image.open(io.BytesIO(base64.b64decode(item.data))) for item in result.content if item.type == "image"]
    texts = [item.text for item in result.content if item.type == "text"]
    return images, texts


def test_every_mode_is_a_described_tool_with_typed_ranges(base_url):
    tools = {tool.name: tool for tool in with_session(base_url, lambda session: session.list_tools()).tools}
    assert GENERATION_TOOLS | {"status", "list_loras", "load_lora", "unload_lora"} <= set(tools)
    text = tools["text_to_image"]
    assert "FLUX.1 [dev]" in text.description
    steps = text.inputSchema["properties"]["num_inference_steps"]
    assert (steps["type"], steps["minimum"], steps["maximum"], steps["default"]) == ("integer", 1, 50, 28)
    assert text.inputSchema["properties"]["image_size"]["enum"][:2] == ["square_hd", "square"]
    assert "prompt" in text.inputSchema.get("required", ["prompt"])


def test_text_to_image_comes_back_as_images_and_urls(base_url):
    async def work(session):
        return await session.call_tool("text_to_image", {"prompt": "a fox", "width": 384, "height": 256,
                                                         "num_inference_steps": 2, "num_images": 2, "seed": 5})

    result = with_session(base_url, work)
    assert not result.isError
    images, texts = images_and_texts(result)
    assert [image.size for image in images] == [(384, 256)] * 2
    assert sum(text.startswith("Image URL: http") for text in texts) == 2
    assert texts[-2] == "5"  # the seed used, then the parameters
    assert "'seeds': [5, 6]" in texts[-1]


def test_kontext_takes_its_image_as_a_data_uri(base_url):
    bird = "data:image/jpeg;base64," + base64.b64encode(Path(EXAMPLE_BIRD).read_bytes()).decode()

    async def work(session):
        return await session.call_tool("kontext_edit", {"image": bird, "prompt": "a red bird", "image_size": "custom",
                                                        "width": 512, "height": 256, "num_inference_steps": 2})

    images, _ = images_and_texts(with_session(base_url, work))
    assert [image.size for image in images] == [(512, 256)]
    assert images[0].convert("L").getextrema()[1] > 0  # an image, not a blank


def test_status_and_the_lora_list_are_tools(base_url):
    async def work(session):
        return await session.call_tool("status", {}), await session.call_tool("list_loras", {})

    status, loras = with_session(base_url, work)
    assert "demo" in status.content[0].text.lower()
    assert "available" in loras.content[0].text and ".safetensors" in loras.content[0].text


def test_bad_values_are_tool_errors_saying_what_is_allowed(base_url):
    async def work(session):
        return (await session.call_tool("text_to_image", {"prompt": "a fox", "num_inference_steps": 500}),
                await session.call_tool("text_to_image", {"prompt": "a fox", "width": 385, "height": 256}))

    out_of_range, off_grid = with_session(base_url, work)
    # The MCP SDK checks the tool's schema first (its words do not name the field); ours name it.
    assert out_of_range.isError and "maximum of 50" in out_of_range.content[0].text
    assert off_grid.isError and "- width: must be a multiple of 16, got 385" in off_grid.content[0].text
