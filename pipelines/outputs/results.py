"""Where results live: one flat folder of image files named by random ids, kept for a while.

The page, the Gradio API and the REST routes all serve results from here. A file is found
by its id alone (checked against a strict pattern), so no path from a request ever
reaches the disk.

Next to the files, `index.jsonl` lists what each result was made with, one JSON object per
line, so a history survives restarts. It is append-only between sweeps, which rewrite it
without the results they removed. One process owns a folder: the lock that keeps lines whole
and compaction safe is a thread lock, not a file lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.imaging.images import MIME_TYPES

log = logging.getLogger("flux_playground")

# The hosted APIs promise result URLs for 7 days.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
# A result's id: its random hex name and the extension of a format results are written in.
RESULT_ID = re.compile(rf"^[0-9a-f]{{32}}\.({'|'.join(MIME_TYPES)})$")
INDEX_NAME = "index.jsonl"


class ResultStore:
    def __init__(self, folder: Path, retention_seconds: float = DEFAULT_RETENTION_SECONDS):
        self.folder = Path(folder).resolve()
        self.retention_seconds = retention_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index_path = self.folder / INDEX_NAME
        self._index_lock = threading.Lock()

    def save(self, data: bytes, extension: str) -> str:
        """Store one encoded image; returns its id, e.g. '3f2c…e1.png'."""
        result_id = f"{uuid.uuid4().hex}.{extension}"
        temporary = self.folder / f".{result_id}.part"
        temporary.write_bytes(data)
        temporary.replace(self.folder / result_id)  # readers never see a half-written file
        return result_id

    def path(self, result_id: str) -> Path | None:
        """The file of a stored result, or None for an unknown or malformed id."""
        if not isinstance(result_id, str) or not RESULT_ID.match(result_id):
            return None
        path = self.folder / result_id
        return path if path.is_file() else None

    # -- the index -------------------------------------------------------------------------

    def record(self, result_id: str, entry: dict[str, Any]) -> None:
        """Append `{"id", "created" (unix time), **entry}` to the index.

        "id" and "created" are the store's: keys of those names in `entry` are ignored. Values
        JSON lacks are written with str(). The line is on disk (flushed) when this returns.
        """
        if not RESULT_ID.match(result_id):
            raise ValueError(f"not a result id: {result_id!r}")
        fields = {key: value for key, value in entry.items() if key not in ("id", "created")}
        line = json.dumps({"id": result_id, "created": time.time(), **fields}, ensure_ascii=False, default=str)
        data = (line + "\n").encode("utf-8")
        with self._index_lock, open(self.index_path, "a+b", buffering=0) as index:
            # After a crash mid-write the file may end in a partial line; start a fresh one so
            # only that broken line is lost, not this one too.
            if index.seek(0, os.SEEK_END) > 0:
                index.seek(-1, os.SEEK_END)
                if index.read(1) != b"\n":
                    data = b"\n" + data
            index.write(data)  # unbuffered: one write, nothing left in a buffer

    def history(self, limit: int | None = 50, mode: str | None = None) -> list[dict[str, Any]]:
        """Index entries, newest first, at most `limit` (None: all), only of results whose
        file still exists and, given `mode`, only those whose "mode" is it. Corrupt lines
        are skipped. Lock-free: appends and the atomic compaction never show a reader a
        mix of two files, and a line still being written reads as corrupt."""
        found: list[dict[str, Any]] = []
        if limit is not None and limit <= 0:
            return found
        for entry in self._entries_newest_first():
            if (mode is None or entry.get("mode") == mode) and self.path(entry["id"]) is not None:
                found.append(entry)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def _entries_newest_first(self) -> Iterator[dict[str, Any]]:
        try:
            lines = _lines_from_end(self.index_path)
            for line in lines:
                entry = _parse_entry(line)
                if entry is not None:
                    yield entry
        except FileNotFoundError:  # nothing recorded yet
            return

    def compact_index(self) -> int:
        """Rewrite the index without entries for missing files and without corrupt lines,
        atomically; returns how many lines were dropped."""
        with self._index_lock:
            try:
                lines = self.index_path.read_bytes().splitlines()
            except FileNotFoundError:
                return 0
            kept = [line for line in lines if (entry := _parse_entry(line)) and self.path(entry["id"])]
            if len(kept) == len(lines):
                return 0  # nothing to drop: leave the file alone
            temporary = self.folder / f".{INDEX_NAME}.part"
            with open(temporary, "wb") as out:
                out.write(b"".join(line + b"\n" for line in kept))
                out.flush()
                os.fsync(out.fileno())  # the new index is whole on disk before it replaces the old
            temporary.replace(self.index_path)
            return len(lines) - len(kept)

    # -- retention -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Delete results older than the retention time, then drop their index lines;
        returns how many results were removed."""
        cutoff = (time.time() if now is None else now) - self.retention_seconds
        removed = 0
        for path in self.folder.iterdir():
            try:
                if RESULT_ID.match(path.name) and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:  # removed meanwhile by someone else
                continue
        self.compact_index()
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


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """One index line as an entry, or None for a blank, corrupt or foreign line."""
    try:
        entry = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not RESULT_ID.match(entry["id"]):
        return None
    return entry


def _lines_from_end(path: Path, block_size: int = 1 << 16) -> Iterator[bytes]:
    """The file's lines, last first, reading blocks from the end: a history of the newest
    few needs only the file's tail, however long a week of results made it."""
    with open(path, "rb") as file:
        position = file.seek(0, os.SEEK_END)
        partial = b""  # the start of a line whose beginning lies in an earlier block
        while position > 0:
            size = min(block_size, position)
            position -= size
            file.seek(position)
            lines = (file.read(size) + partial).split(b"\n")
            partial = lines.pop(0)
            yield from reversed(lines)
        yield partial
