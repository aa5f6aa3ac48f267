"""Where users' LoRAs may come from: a URL (fetched under the same rules as image URLs), a
file or folder inside the server's LoRA folders, or a hub repository.

Local paths outside the LoRA folders are refused: a public server must not read whatever
file a caller names. Fetching a LoRA, from a URL or the hub, stops at the policy's time limit,
and every refusal says what to load instead.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from safetensors import SafetensorError, safe_open

from pipelines.errors import FieldError
from pipelines.fetch import FetchPolicy, FetchTimeout, fetch_url
from pipelines.loras import adapters, hub
from pipelines.loras.hub import HubAccess, Report, quiet

T = TypeVar("T")
MB = 1024 * 1024


@dataclass(frozen=True)
class LoraSourcePolicy:
    folders: tuple[Path, ...]  # local folders LoRAs may be loaded from; the first also keeps downloads
    # Where URLs may point and how large a download may be; its timeout is the time a LoRA's
    # download or hub lookup may take in all (--lora-time-limit).
    fetch: FetchPolicy

    @property
    def downloads(self) -> Path:
        return self.folders[0] / "downloads"

    @property
    def instead(self) -> str:
        """What to load when the hub cannot help."""
        return f"a file in the LoRA folder ({self.folders[0]}) or a URL instead"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (SafetensorError, OSError, ValueError):
        return False


def default_name(source: str) -> str:
    """The name a LoRA gets when none is given: its file's or repository's (a URL's file, not
    the download's hash)."""
    return adapters.lora_name(urlsplit(source).path if is_url(source) else source)


def too_long(source: str, doing: str, policy: LoraSourcePolicy, instead: str) -> FieldError:
    return FieldError("source", f"{source}: {doing} took longer than {policy.fetch.timeout_seconds:g} s, this "
                                "server's limit for fetching a LoRA (--lora-time-limit), and was stopped: try "
                                f"again later, or {instead}")


def size_text(size: int) -> str:
    return f"{size / MB:.1f} MB" if size >= MB else f"{size / 1024:.0f} KB"


def download_too_long(url: str, policy: LoraSourcePolicy) -> FieldError:
    return too_long(url, "the download", policy, f"put the file in the LoRA folder ({policy.folders[0]})")


def download(url: str, policy: LoraSourcePolicy, report: Report = quiet) -> Path:
    """The URL's file, fetched into the downloads folder under its content's hash."""
    shown = Path(urlsplit(url).path).name or url

    def progress(received: int, total: int | None) -> None:
        of = f" of {size_text(total)}" if total else ""
        report(f"Downloading {shown}: {size_text(received)}{of}", received / total if total else None)

    report(f"Downloading {shown}", None)
    try:
        data = fetch_url(url, "source", policy.fetch, progress)
    except FetchTimeout:
        raise download_too_long(url, policy) from None
    policy.downloads.mkdir(parents=True, exist_ok=True)
    path = policy.downloads / f"{hashlib.sha256(data).hexdigest()[:20]}.safetensors"
    if path.exists():
        return path  # checked when it was saved
    # Checked, then moved into place whole: a download of the same URL meanwhile never sees half a file.
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    partial.write_bytes(data)
    if not is_safetensors(partial):
        partial.unlink()
        raise FieldError("source", f"{url} is not a .safetensors file (LoRAs are loaded from safetensors only)")
    os.replace(partial, path)
    return path


def local_path(source: str, policy: LoraSourcePolicy) -> Path | None:
    """The file or folder a local source names, inside the LoRA folders; None when it names
    nothing local (so it may be a hub repository)."""
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [folder / path for folder in policy.folders]
    for candidate in candidates:
        if candidate.exists():
            resolved = candidate.resolve()
            if not any(resolved.is_relative_to(folder.resolve()) for folder in policy.folders):
                raise FieldError("source", f"{source} is outside the LoRA folders: local LoRAs are loaded only from "
                                           f"the LoRA folders ({', '.join(str(f) for f in policy.folders)})")
            return resolved
    if path.is_absolute() or source.startswith(".") or hub.repo_and_file(source) is None:
        raise not_found(source, policy)
    return None


def not_found(source: str, policy: LoraSourcePolicy) -> FieldError:
    files = available_loras(policy)
    listed = ", ".join(files[:10]) + (", …" if len(files) > 10 else "") if files else "none"
    return FieldError("source", f"file not found in the LoRA folders: {source} (they hold: {listed}); a hub "
                                "repository is written user/repo or user/repo/file.safetensors")


def lora_file(path: Path) -> Path:
    """The LoRA file a local file or folder holds, checked to be a safetensors file of LoRA weights."""
    try:
        file = adapters.single_safetensors(path) if path.is_dir() else path
    except ValueError as error:  # no or several files in the folder
        raise FieldError("source", str(error)) from None
    if not is_safetensors(file):
        raise FieldError("source", f"{file.name} is not a .safetensors file (LoRAs are loaded from safetensors only)")
    if not adapters.has_lora_weights(file):
        raise FieldError("source", f"not a LoRA: {file.name} holds no LoRA weights (no tensor named lora_…)")
    return file


def given_source(source: str | None) -> str:
    """The source, stripped; FieldError when there is none."""
    source = source.strip() if isinstance(source, str) else ""
    if not source:
        raise FieldError("source", "source is required: a hub repository (user/repo[/file.safetensors]), "
                                   "a URL to a .safetensors file, or a file in the LoRA folders")
    return source


def fetch_lora(source: str, policy: LoraSourcePolicy, access: HubAccess = HubAccess(),
               report: Report = quiet) -> Path:
    """The local file of a user's LoRA source, downloaded first if it is a URL or on the hub,
    within the policy's time limit; FieldError("source") saying what to do when it cannot be had."""
    source = given_source(source)
    if is_url(source):
        # The fetch keeps to the time limit itself, within about twice it: the thread makes it exact.
        fetched = within_time_limit(lambda: download(source, policy, report), policy.fetch.timeout_seconds,
                                    lambda: download_too_long(source, policy))
        return lora_file(fetched)
    local = local_path(source, policy)
    if local is not None:
        return lora_file(local)
    fetched = within_time_limit(lambda: hub.fetch(source, access, policy.instead, report),
                                policy.fetch.timeout_seconds,
                                lambda: too_long(source, "the Hugging Face Hub lookup and download", policy,
                                                 f"use {policy.instead}"))
    return lora_file(fetched)


def within_time_limit(work: Callable[[], T], seconds: float, overrun: Callable[[], Exception]) -> T:
    """`work()`'s result, or `overrun()` raised once it has run `seconds`. The hub client has
    no deadline for a whole lookup and download (only per request, with retries), so `work`
    runs in a thread of its own, which is left to end by itself when it overruns. It runs in a
    copy of the caller's context, so that the caller's progress reporting works from it."""
    outcome: queue.Queue = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            outcome.put((True, work()))
        except BaseException as error:  # noqa: BLE001 - handed to the caller, who raises it
            outcome.put((False, error))

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), daemon=True, name="lora-fetch").start()
    try:
        finished, value = outcome.get(timeout=seconds)
    except queue.Empty:
        raise overrun() from None
    if not finished:
        raise value
    return value


def available_loras(policy: LoraSourcePolicy) -> list[str]:
    """The .safetensors files in the LoRA folders, as sources to load (relative to their folder)."""
    found = []
    for folder in policy.folders:
        if folder.is_dir():
            found += [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*.safetensors"))
                      if "downloads" not in p.relative_to(folder).parts]
    return sorted(set(found))
