"""Image inputs of the REST APIs: uploads, data URIs and URLs, fetched with care
(`pipelines/fetch.py` says how)."""

from __future__ import annotations

import io

from PIL import Image

from pipelines.errors import FieldError
from pipelines.fetch import FetchPolicy, decode_data_uri, fetch_url, is_public_address

__all__ = ["FetchPolicy", "FieldError", "is_public_address", "load_image_input"]


def load_image_input(value: str | bytes, field: str, policy: FetchPolicy) -> Image.Image:
    """An image from raw bytes (an upload), a data URI or a URL; decoding is left to request
    validation, which checks sizes and formats the same way for every API."""
    if isinstance(value, bytes):
        data = value
    elif not isinstance(value, str) or not value.strip():
        raise FieldError(field, f"{field} is required: a URL, a data URI or an upload")
    elif value.startswith("data:"):
        data = decode_data_uri(value, field)
    else:
        data = fetch_url(value.strip(), field, policy)
    if len(data) > policy.max_bytes:
        raise FieldError(field, f"{field} is {len(data)} bytes; at most {policy.max_bytes} are accepted")
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FieldError(field, f"{field} could not be read as an image ({error})") from None
