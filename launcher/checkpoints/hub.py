"""Hugging Face hub checkpoints, ``model.checkpoint=hf://<org>/<name>[@<revision>]``, through ``huggingface_hub``.

``huggingface_hub`` does everything a user configured for it: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), the token
(``HF_TOKEN``, read by the library itself; the launcher never reads or stores it), ``HF_HUB_OFFLINE``. The weights
are downloaded where they are needed (``action=export|serve|smoke`` on that host); a plan or render elsewhere reads
the cache, or fetches only ``config.json``. The commit a revision resolved to goes into ``lock.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError, user_error

PREFIX = "hf://"
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127})*")
# what a snapshot of a model repository needs for serving (no other frameworks' weights, no images)
PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken")
FIX = ("connect this host to the hub, or fill its cache first (huggingface-cli download <repo>, then "
       "HF_HUB_OFFLINE=1); gated repositories need HF_TOKEN set")


@dataclass(frozen=True)
class HubCheckpoint:
    repo_id: str
    revision: str | None  # as asked; None: the repository's default branch

    @property
    def uri(self) -> str:
        return PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Resolved:
    """A hub checkpoint in the local cache: the snapshot directory and the commit it holds."""

    path: Path
    commit: str


def parse(checkpoint: str | None) -> HubCheckpoint | None:
    """``hf://org/name[@revision]`` as a repository id and revision (None for any other checkpoint)."""
    if not checkpoint or not checkpoint.startswith(PREFIX):
        return None
    repo, _, revision = checkpoint[len(PREFIX):].partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo or (revision and (not _REVISION.fullmatch(revision)
                                                                 or ".." in revision)):
        raise user_error("model.checkpoint", f"'{checkpoint}' is not hf://<org>/<name>[@<revision>]",
                         "e.g. model.checkpoint=hf://Qwen/Qwen3-8B or hf://Qwen/Qwen3-8B@main")
    return HubCheckpoint(repo, revision or None)


def _failure(ref: HubCheckpoint, what: str, exc: Exception) -> LauncherError:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return user_error("model.checkpoint", f"cannot {what} {ref.uri}: {type(exc).__name__}: {text}", FIX)


def cached(ref: HubCheckpoint) -> Resolved | None:
    """The snapshot in the local cache, without any network access; None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref.repo_id, revision=ref.revision, local_files_only=True,
                                      allow_patterns=list(PATTERNS)))
    except Exception:  # huggingface_hub says "not in the cache" with several exception types
        return None
    return Resolved(path, path.name) if (path / "config.json").is_file() else None


def download(ref: HubCheckpoint) -> Resolved:
    """Download the snapshot into the cache (what is there already is not fetched again)."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=list(PATTERNS)))
    except Exception as exc:
        raise _failure(ref, "download", exc) from None
    return Resolved(path, path.name)


def config(ref: HubCheckpoint) -> Path:
    """Only ``config.json`` (from the cache, else the hub), for a plan on a host that does not hold the weights."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.repo_id, "config.json", revision=ref.revision))
    except Exception as exc:
        raise _failure(ref, "resolve", exc) from None
