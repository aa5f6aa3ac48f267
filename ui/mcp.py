"""The app as an MCP server, through Gradio's own (`mcp_server=True` when mounting, at
`/gradio_api/mcp/`): every named API endpoint is a tool, described and typed by what the API
page says of it (`ui/api_docs.py`), its image inputs taking URLs or data URIs.

Gradio's MCP server sends an output that is one file as image content plus its URL, and any
other output as text. A generation endpoint's first output is a gallery, a list of images:
`send_galleries_as_images` hands its images on one by one, so that each reaches the MCP
client as an image and a URL; the seed and the parameters follow as text.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio_client.utils import is_file_obj_with_meta


def gallery_files(output: Any) -> list[Any]:
    """A gallery's images as a list of files; any other output as a list of itself."""
    if isinstance(output, list) and output and all(
            isinstance(item, dict) and is_file_obj_with_meta(item.get("image")) for item in output):
        return [item["image"] for item in output]
    return [output]


def send_galleries_as_images(blocks: gr.Blocks) -> None:
    """After mounting `blocks` with `mcp_server=True`: galleries go out as MCP image content."""
    server = blocks.mcp_server_obj
    if server is None:
        return
    postprocess = server.postprocess_output_data  # Gradio has no public hook for this

    def images_first(data: list[Any], root_url: str):
        if len(data) == 1 and isinstance(data[0], tuple):  # a queued endpoint's outputs, as one result
            data = list(data[0])
        return postprocess([file for output in data for file in gallery_files(output)], root_url)

    server.postprocess_output_data = images_first
