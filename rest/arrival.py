"""When each HTTP request arrived, so that a result can report how long it waited before the
accelerator took it: an ASGI middleware stamps the scope, and `arrival_time` reads it."""

from __future__ import annotations

import time


class ArrivalStamp:
    """ASGI middleware noting when each HTTP request arrived, so a result can report how
    long it waited before the accelerator took it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["received_at"] = time.monotonic()
        await self.app(scope, receive, send)


def arrival_time(scope: dict | None) -> float:
    """When the request with this ASGI scope arrived (now, if it was not stamped)."""
    try:
        return scope["state"]["received_at"]
    except (KeyError, TypeError):
        return time.monotonic()
