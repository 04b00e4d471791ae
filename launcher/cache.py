"""The one export cache: content-addressed entries, written to a temp dir and renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.checkpoints import Checkpoint

CONVERTER_VERSION = "1"  # bump when a converter's output changes, so old entries are not reused


def fill(entry: Path, produce: Callable[[Path], None]) -> bool:
    """Create ``entry`` with ``produce(tmp_dir)`` unless it exists; returns True on a cache hit.

    ``produce`` writes into a fresh temporary directory next to the entry; only a complete
    result is renamed into place, so an interrupted export leaves nothing half-written.
    """
    if entry.is_dir():
        return True
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        produce(tmp)
        os.replace(tmp, entry)
    except OSError:
        if entry.is_dir():  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
            return True
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return False


def export_hf(checkpoint: Checkpoint, entry: Path, dtype: str = "auto") -> tuple[Path, bool]:
    """Convert ``checkpoint`` to an HF directory at cache entry ``entry``; returns ``(entry, hit)``."""
    from launcher.convert import to_hf

    hit = fill(entry, lambda tmp: to_hf(checkpoint, tmp, dtype))
    return entry, hit
