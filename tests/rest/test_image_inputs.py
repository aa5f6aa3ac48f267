"""Image inputs of the REST APIs: data URIs and URLs, fetched within limits, refusals explained."""

from __future__ import annotations

import base64

import pytest

from pipelines.errors import FieldError
from rest.inputs import FetchPolicy, is_public_address, load_image_input

OPEN = FetchPolicy(allow_private=True)


def test_public_addresses():
    assert is_public_address("93.184.216.34") and is_public_address("2606:2800:220:1::1")
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
                    "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1"):
        assert not is_public_address(address), address


def test_url_image_is_fetched(image_server):
    image = load_image_input(f"{image_server}/bluebird.jpg", "image_url", OPEN)
    assert image.size == (640, 640)


def test_loopback_is_refused_by_default(image_server):
    with pytest.raises(FieldError, match="127.0.0.1, a private, loopback or link-local address"):
        load_image_input(f"{image_server}/bluebird.jpg", "image_url", FetchPolicy())


def test_every_redirect_hop_is_checked(image_server, monkeypatch):
    # Treat the loopback test server as public, so that only its redirect target is private.
    import pipelines.fetch

    real = pipelines.fetch.is_public_address
    monkeypatch.setattr(pipelines.fetch, "is_public_address", lambda a: a == "127.0.0.1" or real(a))
    assert load_image_input(f"{image_server}/redirect-to//bluebird.jpg", "image_url", FetchPolicy()).size == (640, 640)
    with pytest.raises(FieldError, match="169.254.169.254, a private, loopback or link-local address"):
        load_image_input(f"{image_server}/redirect-to/http://169.254.169.254/latest", "image_url", FetchPolicy())


def test_size_cap_and_missing_files(image_server):
    with pytest.raises(FieldError, match="larger than 1000 bytes|at most 1000 are accepted"):
        load_image_input(f"{image_server}/bluebird.jpg", "image_url", FetchPolicy(allow_private=True, max_bytes=1000))
    with pytest.raises(FieldError, match="returned HTTP 404"):
        load_image_input(f"{image_server}/missing.png", "image_url", OPEN)


def test_other_schemes_and_bad_data_uris_are_refused():
    with pytest.raises(FieldError, match="must be an http"):
        load_image_input("file:///etc/passwd", "image_url", OPEN)
    with pytest.raises(FieldError, match="must be an http"):
        load_image_input("/etc/passwd", "image_url", OPEN)
    with pytest.raises(FieldError, match="invalid base64"):
        load_image_input("data:image/png;base64,@@@", "image_url", OPEN)
    with pytest.raises(FieldError, match="could not be read as an image"):
        load_image_input("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "image_url", OPEN)


def test_unresolvable_host_says_so():
    with pytest.raises(FieldError, match="could not resolve no-such-host.invalid"):
        load_image_input("http://no-such-host.invalid/x.png", "image_url", FetchPolicy())
