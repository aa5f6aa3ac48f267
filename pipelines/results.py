"""Where results live: one flat folder of image files named by random ids, kept for a while.

The page, the Gradio API and the REST routes all serve results from here. A file is found
by its id alone (checked against a strict pattern), so no path from a request ever
reaches the disk.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger("flux_playground")

# The hosted APIs promise result URLs for 7 days.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
RESULT_ID = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")


class ResultStore:
    def __init__(self, folder: Path, retention_seconds: float = DEFAULT_RETENTION_SECONDS):
        self.folder = Path(folder).resolve()
        self.retention_seconds = retention_seconds
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, data: bytes, extension: str) -> str:
        """Store one encoded image; returns its id, e.g. '3f2c…e1.png'."""
        result_id = f"{uuid.uuid4().hex}.{extension}"
        temporary = self.folder / f".{result_id}.part"
        temporary.write_bytes(data)
        temporary.replace(self.folder / result_id)  # readers never see a half-written file
        return result_id

    def path(self, result_id: str) -> Path | None:
        """The file of a stored result, or None for an unknown or malformed id."""
        if not RESULT_ID.match(result_id):
            return None
        path = self.folder / result_id
        return path if path.is_file() else None

    def sweep(self, now: float | None = None) -> int:
        """Delete results older than the retention time; returns how many were removed."""
        cutoff = (now or time.time()) - self.retention_seconds
        removed = 0
        for path in self.folder.iterdir():
            if RESULT_ID.match(path.name) and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def start_sweeper(self, interval_seconds: float = 3600) -> threading.Thread:
        """Sweep now and then every `interval_seconds`, in a daemon thread."""

        def loop():
            while True:
                try:
                    removed = self.sweep()
                    if removed:
                        log.info("removed %d results older than %.0f s", removed, self.retention_seconds)
                except OSError:
                    log.exception("sweeping %s failed", self.folder)
                time.sleep(interval_seconds)

        thread = threading.Thread(target=loop, name="result-sweeper", daemon=True)
        thread.start()
        return thread
