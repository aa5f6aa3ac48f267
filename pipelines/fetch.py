"""Fetching what users point at: URLs and data URIs (image inputs, LoRA files), with care.

A URL is fetched only over http(s), only from public addresses (private, loopback,
link-local and reserved ones are refused unless allowed), with a cap on its size and on the
time the whole fetch takes, and every refusal says why. The address checked is the one
actually connected to, after each redirect, so a DNS answer that changes between lookup and
connection cannot slip through.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from pipelines.errors import FieldError

MAX_REDIRECTS = 3
DATA_URI = re.compile(r"^data:(?P<type>[\w/+.-]*)(?P<params>(;[\w=.+-]+)*)?,(?P<data>.*)$", re.DOTALL)


@dataclass
class FetchPolicy:
    """Limits for fetched inputs: where URLs may point, and how large and slow any input may be."""

    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_seconds: float = 15.0  # for the whole fetch, redirects and a slowly trickling body included


class FetchTimeout(FieldError):
    """A fetch that took longer than its policy's `timeout_seconds`."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def decode_data_uri(uri: str, field: str) -> bytes:
    match = DATA_URI.match(uri)
    if not match or ";base64" not in (match["params"] or ""):
        raise FieldError(field, f"{field} is not a base64 data URI (data:image/png;base64,...)")
    try:
        return base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, f"{field} holds invalid base64 data") from None


def _check_host(url: str, field: str, policy: FetchPolicy) -> None:
    """Refuse before connecting when the host resolves to any non-public address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FieldError(field, f"{field} must be an http(s) URL, a data URI or an upload")
    if policy.allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except socket.gaierror as error:
        raise FieldError(field, f"{field}: could not resolve {parts.hostname} ({error.strerror})") from None
    private = sorted(a for a in addresses if not is_public_address(a))
    if private:
        raise FieldError(field, f"{field}: {parts.hostname} resolves to {private[0]}, a private, loopback "
                                "or link-local address; such URLs are refused")


def _check_peer(response: httpx.Response, url: str, field: str, policy: FetchPolicy) -> None:
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer is None:
        raise FieldError(field, f"{field}: could not tell which address {url} connected to")
    if not policy.allow_private and not is_public_address(peer[0]):
        raise FieldError(field, f"{field}: {urlsplit(url).hostname} resolves to {peer[0]}, a private, "
                                "loopback or link-local address; such URLs are refused")


def fetch_url(url: str, field: str, policy: FetchPolicy,
              on_bytes: Callable[[int, int | None], None] | None = None) -> bytes:
    """The body of an http(s) URL, within the policy's limits. `on_bytes(received, total)`
    follows the download (total: the declared length, or None)."""
    deadline = time.monotonic() + policy.timeout_seconds
    try:
        with httpx.Client(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _check_host(url, field, policy)
                # Each wait (connecting, each read) may take what is left of the time at the request's
                # start, and the body's arrival is checked against the deadline: at most about twice the
                # time in all, however slowly the server sends.
                with client.stream("GET", url, timeout=max(deadline - time.monotonic(), 0.001)) as response:
                    _check_peer(response, url, field, policy)
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise FieldError(field, f"{field}: fetching {url} returned HTTP {response.status_code}")
                    return _read_capped(response, url, field, policy, deadline, on_bytes)
            raise FieldError(field, f"{field}: {url} redirected more than {MAX_REDIRECTS} times")
    except httpx.TimeoutException:
        raise _too_long(url, field, policy) from None
    except httpx.HTTPError as error:
        raise FieldError(field, f"{field}: could not fetch {url} ({type(error).__name__}: {error})") from None


def _too_long(url: str, field: str, policy: FetchPolicy) -> FetchTimeout:
    return FetchTimeout(field, f"{field}: fetching {url} took longer than {policy.timeout_seconds:g} s")


def _read_capped(response: httpx.Response, url: str, field: str, policy: FetchPolicy, deadline: float,
                 on_bytes: Callable[[int, int | None], None] | None) -> bytes:
    declared = response.headers.get("content-length")
    total = int(declared) if declared and declared.isdigit() else None
    if total is not None and total > policy.max_bytes:
        raise FieldError(field, f"{field}: {url} is {total} bytes; at most {policy.max_bytes} are accepted")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > policy.max_bytes:
            raise FieldError(field, f"{field}: {url} is larger than {policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise _too_long(url, field, policy)
        if on_bytes is not None:
            on_bytes(len(body), total)
    return bytes(body)
