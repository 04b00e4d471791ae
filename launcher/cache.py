"""The one export cache: content-addressed entries, written to a temp dir and renamed into place.

Temporary directories carry the writer's pid (``.<entry>.<pid>.<random>.tmp``), so the next writer in the
same directory removes those whose process is gone (a SIGKILLed export leaves nothing behind for long).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CONVERTER_VERSION = "1"  # bump when a converter's output changes, so old entries are not reused
TMP_SUFFIX = ".tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(directory: Path) -> None:
    """Remove temp dirs under ``directory`` left by processes that no longer run."""
    if not directory.is_dir():
        return
    for path in directory.glob(f".*{TMP_SUFFIX}"):
        parts = path.name.rsplit(".", 3)  # [".<entry>", pid, random, "tmp"]
        pid = parts[1] if len(parts) == 4 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def temp_dir(entry: Path) -> Path:
    """A fresh temporary directory beside ``entry``, named with this process's pid."""
    return Path(tempfile.mkdtemp(prefix=f".{entry.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=entry.parent))


def fill(entry: Path, produce: Callable[[Path], None]) -> bool:
    """Create ``entry`` with ``produce(tmp_dir)`` unless it exists; returns True on a cache hit.

    ``produce`` writes into a fresh temporary directory next to the entry; only a complete
    result is renamed into place, so an interrupted export leaves nothing half-written.
    """
    if entry.is_dir():
        return True
    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(entry.parent)
    tmp = temp_dir(entry)
    try:
        produce(tmp)
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if entry.is_dir():  # another process finished the same entry first
            return True
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return False
