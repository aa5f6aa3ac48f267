"""Where users' LoRAs may come from: a URL (fetched under the same rules as image URLs), a
file or folder inside the server's LoRA folders, or a hub repository.

Local paths outside the LoRA folders are refused: a public server must not read whatever
file a caller names.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from pipelines.errors import FieldError
from pipelines.fetch import FetchPolicy, fetch_url


@dataclass(frozen=True)
class LoraSourcePolicy:
    folders: tuple[Path, ...]  # local folders LoRAs may be loaded from; the first also keeps downloads
    fetch: FetchPolicy  # where URLs may point, how large and slow a download may be

    @property
    def downloads(self) -> Path:
        return self.folders[0] / "downloads"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (SafetensorError, OSError, ValueError):
        return False


def download(url: str, policy: LoraSourcePolicy, field: str = "source") -> Path:
    """The URL's file, fetched into the downloads folder under its content's hash."""
    data = fetch_url(url, field, policy.fetch)
    policy.downloads.mkdir(parents=True, exist_ok=True)
    path = policy.downloads / f"{hashlib.sha256(data).hexdigest()[:20]}.safetensors"
    if path.exists():
        return path  # checked when it was saved
    # Checked, then moved into place whole: a download of the same URL meanwhile never sees half a file.
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.part")
    partial.write_bytes(data)
    if not is_safetensors(partial):
        partial.unlink()
        raise FieldError(field, f"{field}: {url} is not a .safetensors file (LoRAs are loaded from safetensors only)")
    os.replace(partial, path)
    return path


def local_path(source: str, policy: LoraSourcePolicy, field: str = "source") -> Path | None:
    """The file or folder a local source names, inside the LoRA folders; None when it names
    nothing local (so it may be a hub repository)."""
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [folder / path for folder in policy.folders]
    for candidate in candidates:
        if candidate.exists():
            resolved = candidate.resolve()
            if not any(resolved.is_relative_to(folder.resolve()) for folder in policy.folders):
                raise FieldError(field, f"{field}: local LoRAs are loaded only from the LoRA folders "
                                        f"({', '.join(str(f) for f in policy.folders)})")
            return resolved
    if path.is_absolute() or source.startswith("."):
        raise FieldError(field, f"{field}: {source} does not exist in the LoRA folders")
    return None


def resolve_source(source: str, policy: LoraSourcePolicy, field: str = "source") -> str:
    """What the manager loads for a user's LoRA source: a local file or folder, or a hub id."""
    source = source.strip() if isinstance(source, str) else ""
    if not source:
        raise FieldError(field, f"{field} is required: a hub repository (user/repo[/file.safetensors]), "
                                "a URL to a .safetensors file, or a file in the LoRA folders")
    if is_url(source):
        return str(download(source, policy, field))
    local = local_path(source, policy, field)
    return str(local) if local is not None else source


def available_loras(policy: LoraSourcePolicy) -> list[str]:
    """The .safetensors files in the LoRA folders, as sources to load (relative to their folder)."""
    found = []
    for folder in policy.folders:
        if folder.is_dir():
            found += [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*.safetensors"))
                      if "downloads" not in p.relative_to(folder).parts]
    return sorted(set(found))
