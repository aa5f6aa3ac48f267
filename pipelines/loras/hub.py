"""LoRAs from the Hugging Face Hub: "user/repo" (its one .safetensors file) or
"user/repo/file.safetensors", downloaded to the hub cache.

`download` is the plain download (the control LoRAs use it too); `fetch` is a user's load,
whose failures say what happened and what to do instead, and which says at once when there is
no network rather than after the hub client's retries (about 23 s).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies

from pipelines.errors import FieldError

# (what is happening, the fraction done or None): how a load reports its progress.
Report = Callable[[str, float | None], None]


def quiet(stage: str, fraction: float | None = None) -> None:
    """A `Report` that reports nowhere."""


@dataclass(frozen=True)
class HubAccess:
    token: str | None = None
    local_files_only: bool = False  # hub files come from the cache only


def repo_and_file(source: str) -> tuple[str, str | None] | None:
    """("user/repo", "file.safetensors" or None) for a hub source; None when it is not one."""
    parts = source.strip("/").split("/")
    if len(parts) < 2 or source.startswith((".", "/")) or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def download(source: str, weight_name: str | None = None, local_files_only: bool = False,
             token: str | None = None, report: Report = quiet) -> Path:
    """The local file of a hub LoRA: `weight_name`, the file the source names, or the
    repository's only .safetensors file."""
    from huggingface_hub import hf_hub_download, list_repo_files

    found = repo_and_file(source)
    if found is None:
        raise ValueError(f"{source!r} is not a file, a folder or a hub repository (user/repo)")
    repo, weight_name = found[0], weight_name or found[1]
    if weight_name is None:
        report(f"Looking up {repo} on the Hugging Face Hub", None)
        files = [f for f in list_repo_files(repo, token=token) if f.endswith(".safetensors")]
        if len(files) != 1:
            raise ValueError(f"{repo} holds {len(files)} .safetensors files ({', '.join(files) or 'none'}); "
                             "name the one to load as user/repo/file.safetensors")
        weight_name = files[0]
    report(f"Downloading {repo}/{weight_name} from the Hugging Face Hub", None)
    return Path(hf_hub_download(repo, weight_name, token=token, local_files_only=local_files_only))


def fetch(source: str, access: HubAccess, instead: str, report: Report = quiet) -> Path:
    """A user's hub LoRA; FieldError("source") saying what went wrong and, where the hub
    cannot help, to load `instead` (e.g. "a file in the LoRA folder (loras) or a URL")."""
    repo, weight_name = repo_and_file(source) or (source, None)
    if weight_name is None or not access.local_files_only:  # this goes to the network
        require_network(source, instead)
    try:
        return download(source, None, access.local_files_only, access.token, report)
    except Exception as error:  # noqa: BLE001 - each kind of failure is explained; the rest is named
        raise FieldError("source", failure(error, source, repo, weight_name, access, instead)) from None


def require_network(source: str, instead: str) -> None:
    """Fail at once when the hub's host cannot even be resolved (and no proxy would resolve it)."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or getproxies():
        return  # the hub client says so itself, or a proxy may reach what DNS here cannot
    host = urlsplit(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise FieldError("source", f"{source}: no network to the Hugging Face Hub ({host} cannot be "
                                   f"resolved): use {instead}") from None


def failure(error: Exception, source: str, repo: str, weight_name: str | None, access: HubAccess,
            instead: str) -> str:
    """What a failed hub load means, and what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(error, OfflineModeIsEnabled):
        return f"{source}: no network to the Hugging Face Hub (this server runs offline, HF_HUB_OFFLINE=1): use {instead}"
    if isinstance(error, LocalEntryNotFoundError):
        if access.local_files_only:
            return (f"{source} is not in this server's Hugging Face cache, and this server takes hub files from "
                    f"its cache only: use {instead}")
        return f"{source}: no network to the Hugging Face Hub, and the file is not in the cache: use {instead}"
    if isinstance(error, GatedRepoError):
        return (f"{repo} is gated on the Hugging Face Hub: accept its terms there, and give this server a token "
                "that may read it (HF_TOKEN)")
    if isinstance(error, RepositoryNotFoundError):
        return (f"{repo} is not a model repository on the Hugging Face Hub (or it is private: give this server "
                f"a token that may read it, HF_TOKEN); check the name, or use {instead}")
    if isinstance(error, EntryNotFoundError):
        return f"{weight_name} is not a file of {repo} on the Hugging Face Hub: check the file's name"
    if isinstance(error, ValueError):  # the repository holds no or several .safetensors files
        return str(error)
    if isinstance(error, HfHubHTTPError):
        return f"{source}: the Hugging Face Hub answered with an error ({error}); try again later, or use {instead}"
    if is_network_error(error):
        return f"{source}: no network to the Hugging Face Hub ({error}): use {instead}"
    return f"{source} could not be fetched from the Hugging Face Hub ({type(error).__name__}: {error})"


def is_network_error(error: BaseException | None) -> bool:
    """Whether a connection failure (no route, no name resolution, a refused or reset
    connection) is behind `error`, whichever HTTP client raised it."""
    while error is not None:
        if isinstance(error, (ConnectionError, socket.gaierror, TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False
