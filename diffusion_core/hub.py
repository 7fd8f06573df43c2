"""Models by Hugging Face hub id, ``org/name[@revision]``, through ``huggingface_hub``'s own cache.

Why huggingface_hub rather than our own downloader: it owns the standard cache (``HF_HOME``,
``HF_HUB_CACHE``), ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, tokens, resumable downloads and revision
refs, and other tools share that cache. What Diffill adds:

- **only the files the loader reads** (config, safetensors shards and index, tokenizer files, a
  chat template): never ``*.bin`` (pickle) and never code;
- **cache first**: a model already in the cache loads without touching the network, so an editor
  starts offline; ``diffill pull`` asks the hub again (a branch may have moved);
- **hashes**: after a download every safetensors file is checked against the sha256 the hub lists
  for it (its LFS object id); a mismatch deletes the file and names it;
- **one clear error** when the model is neither cached nor reachable.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .interface import load_reporter

__all__ = [
    "ALLOW_PATTERNS",
    "CachedModel",
    "HubError",
    "cache_dir",
    "cached_models",
    "fetch",
    "parse_hub_id",
    "resolve",
]

# the files a checkpoint directory is read from (diffusion_core/checkpoint.py, coder/load.py,
# http_server/chat.py); nothing else is downloaded
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
]

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")

Progress = Callable[..., Any]  # a tqdm class (huggingface_hub's ``tqdm_class``)


def _reported_progress(model_id: str) -> Progress | None:
    report = load_reporter()
    if report is None:
        return None
    from tqdm.auto import tqdm

    class Reported(tqdm):  # type: ignore[misc, valid-type]
        last = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            now = time.monotonic()
            if now - self.last >= 0.5 or (self.total and self.n >= self.total):
                self.last = now
                report(f"Downloading {model_id}: {self.n:g} of {self.total or '?'} files")
            return out

    report(f"Downloading {model_id} from the hub")
    return Reported


class HubError(ValueError):
    """A hub model that cannot be had: not cached and not reachable, unknown, or corrupt."""


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``text`` has the shape of a hub id, else None."""
    m = _HUB_ID.match(text.strip())
    return (m["repo"], m["rev"]) if m else None


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve(model_id: str, progress: Progress | None = None) -> Path:
    """The local snapshot of a hub model: from the cache when it is there, else downloaded."""
    parsed = parse_hub_id(model_id)
    if parsed is None:
        raise HubError(f"{model_id!r} is neither a local directory nor a hub id (org/name[@revision])")
    repo, rev = parsed
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(
            snapshot_download(repo, revision=rev, allow_patterns=ALLOW_PATTERNS, local_files_only=True)
        )
        if (path / "config.json").is_file():
            return path
    except LocalEntryNotFoundError:
        pass
    return fetch(model_id, progress)


def fetch(model_id: str, progress: Progress | None = None) -> Path:
    """Ask the hub for ``model_id`` (whatever is cached), download what is missing and check it."""
    parsed = parse_hub_id(model_id)
    if parsed is None:
        raise HubError(f"{model_id!r} is not a hub id (org/name[@revision])")
    repo, rev = parsed
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"the Hugging Face cache ({cache_dir()})"
    progress = progress or _reported_progress(model_id)
    try:
        path = Path(snapshot_download(repo, revision=rev, allow_patterns=ALLOW_PATTERNS, tqdm_class=progress))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the hub cannot be reached"
        raise HubError(
            f"{model_id}: not in {where} and {why}; run `diffill pull {model_id}` where the hub "
            "is reachable (the same HF_HOME), or pass a local directory"
        ) from None
    except GatedRepoError:
        raise HubError(f"{model_id}: the repository is gated; log in (HF_TOKEN) with access to it") from None
    except RevisionNotFoundError:
        raise HubError(f"{model_id}: the hub has no revision {rev!r} of {repo}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{model_id}: no such model repository on the hub (or it is private)") from None
    except HfHubHTTPError as e:
        raise HubError(f"{model_id}: the hub answered {e}") from None
    if not _offline():
        # the snapshot folder is named by its commit: list that commit's files with their sha256
        try:
            files = HfApi().list_repo_tree(repo, revision=path.name, recursive=True)
            expected = {f.path: f.lfs.sha256 for f in files if getattr(f, "lfs", None) is not None}
        except HfHubHTTPError as e:
            raise HubError(
                f"{model_id}: downloaded, but the hub's file hashes to check it against "
                f"could not be read ({e})"
            ) from None
        check_hashes(path, expected)
    if not (path / "config.json").is_file():
        raise HubError(f"{model_id}: the repository has no config.json (not a model checkpoint?)")
    return path


def check_hashes(snapshot: Path, expected: dict[str, str]) -> None:
    """Every safetensors file of ``snapshot`` against the sha256 the hub lists for it (a weights
    file the hub lists no hash for is refused too: unchecked weights are not loaded)."""
    for local in sorted(snapshot.rglob("*.safetensors")):
        name = local.relative_to(snapshot).as_posix()
        sha = expected.get(name)
        if sha is None:
            raise HubError(f"{name}: the hub lists no sha256 for it, so it cannot be checked; not loading it")
        h = hashlib.sha256()
        with open(local, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        if h.hexdigest() != sha:
            blob = local.resolve()
            local.unlink(missing_ok=True)
            if blob != local:
                blob.unlink(missing_ok=True)
            raise HubError(
                f"{name}: downloaded file has sha256 {h.hexdigest()}, the hub lists {sha}; "
                "deleted it (run the command again to download it again)"
            )


@dataclass
class CachedModel:
    repo: str
    revisions: list[str]  # refs (e.g. "main") or commit hashes
    path: Path  # the newest snapshot
    size_bytes: int


def cached_models() -> list[CachedModel]:
    """The model repositories in the Hugging Face cache (any tool's), newest first."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(os.environ.get("HF_HUB_CACHE") or None)
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: -r.last_modified):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        refs = sorted({ref for r in repo.revisions for ref in r.refs}) or [newest.commit_hash[:12]]
        out.append(CachedModel(repo.repo_id, refs, Path(newest.snapshot_path), repo.size_on_disk))
    return out
