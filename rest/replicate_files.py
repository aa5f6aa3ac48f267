"""Replicate's files API: `POST /v1/files` (multipart `content`), `GET /v1/files`,
`GET /v1/files/{id}`, `GET /v1/files/{id}/download`, `DELETE /v1/files/{id}`.

The replicate client uploads every file object of a prediction's input here and puts the
File's `urls.get` in its place; a prediction naming such a URL reads the file from this
store, not over HTTP (fetches of this server's own, loopback, address are refused by
default). Files are kept on disk, each beside a JSON of its File fields, for a day, as
Replicate keeps them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

FILE_ID = re.compile(r"^[0-9a-f]{32}$")
EXPIRY_SECONDS = 24 * 3600


def iso_time(unix_time: float | None) -> str | None:
    """Replicate's timestamps: ISO 8601 in UTC."""
    if unix_time is None:
        return None
    return datetime.fromtimestamp(unix_time, UTC).isoformat().replace("+00:00", "Z")


class FileStore:
    """Uploaded files in `folder`: `<id>` holds the bytes, `<id>.json` the File's fields."""

    def __init__(self, folder: Path, expiry_seconds: float = EXPIRY_SECONDS):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.expiry_seconds = expiry_seconds

    def add(self, data: bytes, name: str, content_type: str, metadata: dict[str, Any]) -> dict[str, Any]:
        self.sweep()
        now = time.time()
        entry = {"id": uuid.uuid4().hex, "name": name, "content_type": content_type, "size": len(data),
                 "etag": hashlib.md5(data).hexdigest(), "checksums": {"sha256": hashlib.sha256(data).hexdigest(),
                                                                     "md5": hashlib.md5(data).hexdigest()},
                 "metadata": metadata, "created_at": iso_time(now), "expires_at": iso_time(now + self.expiry_seconds)}
        (self.folder / entry["id"]).write_bytes(data)
        self._entry_path(entry["id"]).write_text(json.dumps(entry))  # written last: the file is whole when listed
        return entry

    def get(self, file_id: str) -> dict[str, Any] | None:
        if not FILE_ID.match(file_id):
            return None
        try:
            return json.loads(self._entry_path(file_id).read_text())
        except (OSError, ValueError):
            return None

    def read(self, file_id: str) -> bytes | None:
        return (self.folder / file_id).read_bytes() if self.get(file_id) is not None else None

    def entries(self) -> list[dict[str, Any]]:
        found = [self.get(path.stem) for path in self.folder.glob("*.json")]
        return sorted((entry for entry in found if entry), key=lambda entry: entry["created_at"], reverse=True)

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        self._entry_path(file_id).unlink(missing_ok=True)
        (self.folder / file_id).unlink(missing_ok=True)
        return True

    def sweep(self) -> None:
        """Forget files past their expiry."""
        cutoff = time.time() - self.expiry_seconds
        for path in self.folder.glob("*.json"):
            try:
                if path.stat().st_mtime < cutoff:
                    self.delete(path.stem)
            except FileNotFoundError:  # deleted meanwhile
                continue

    def _entry_path(self, file_id: str) -> Path:
        return self.folder / f"{file_id}.json"


def files_url(base: str, file_id: str) -> str:
    return f"{base}/v1/files/{file_id}"


def file_object(entry: dict[str, Any], base: str) -> dict[str, Any]:
    return {**entry, "urls": {"get": files_url(base, entry["id"])}}


def own_file_id(url: Any, base: str) -> str | None:
    """The id of one of this store's files when `url` is its `urls.get`."""
    prefix = files_url(base, "")
    if isinstance(url, str) and url.startswith(prefix) and FILE_ID.match(url[len(prefix):]):
        return url[len(prefix):]
    return None


def create_files_router(files: FileStore, base_of, max_bytes: int, error) -> APIRouter:
    """The files routes; `base_of(request)`: this server's public base URL; `error(status,
    detail)`: a response in Replicate's error shape."""
    router = APIRouter(prefix="/files")

    def not_found(file_id: str) -> JSONResponse:
        return error(404, f"No file {file_id!r}; files are kept for a day")

    @router.post("", status_code=201)
    async def create_file(http: Request):
        """Upload a file (multipart `content`, optional `metadata` JSON) to use as a prediction input."""
        form = await http.form()
        upload = form.get("content")
        if not hasattr(upload, "read"):
            return error(422, "content is required: the file, as a multipart upload")
        data = await upload.read()
        if len(data) > max_bytes:
            return error(413, f"content is {len(data)} bytes; at most {max_bytes} are accepted")
        try:
            metadata = json.loads(form.get("metadata") or "{}")
        except ValueError:
            return error(422, "metadata must be a JSON object")
        entry = files.add(data, upload.filename or "file", upload.content_type or "application/octet-stream",
                          metadata if isinstance(metadata, dict) else {})
        return file_object(entry, base_of(http))

    @router.get("")
    def list_files(http: Request):
        return {"next": None, "previous": None,
                "results": [file_object(entry, base_of(http)) for entry in files.entries()]}

    @router.get("/{file_id}")
    def get_file(file_id: str, http: Request):
        entry = files.get(file_id)
        return file_object(entry, base_of(http)) if entry is not None else not_found(file_id)

    @router.get("/{file_id}/download")
    def download_file(file_id: str):
        entry, data = files.get(file_id), files.read(file_id)
        if entry is None or data is None:
            return not_found(file_id)
        return Response(data, media_type=entry["content_type"])

    @router.delete("/{file_id}", status_code=204)
    def delete_file(file_id: str):
        return Response(status_code=204) if files.delete(file_id) else not_found(file_id)

    return router
