"""Progress of a conversion: bytes, tensors, rate and time left, shown once it has run for a second.

On a terminal it is a ``rich`` progress bar on stderr (transient: it leaves no lines behind); elsewhere (logs, CI,
a pipe) nothing is printed, so a failing conversion still ends in its one error line.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

SHOW_AFTER_S = 1.0


class Progress:
    """``with Progress("export", total_bytes, total_tensors) as p: ... p.advance(nbytes, tensors=1)``; thread-safe."""

    def __init__(self, description: str, total_bytes: int | None, total_tensors: int | None = None) -> None:
        self.description, self.total_bytes, self.total_tensors = description, total_bytes, total_tensors
        self.bytes = self.tensors = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None
        self._enabled = sys.stderr.isatty()

    def advance(self, nbytes: int = 0, tensors: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.tensors += tensors
            if not self._enabled:
                return
            if self._bar is None and time.perf_counter() - self.started >= SHOW_AFTER_S:
                self._start()
            if self._bar is not None:
                self._bar.update(self._task, completed=self.bytes, tensors=self._tensor_text())

    def _tensor_text(self) -> str:
        return f"{self.tensors}/{self.total_tensors} tensors" if self.total_tensors else f"{self.tensors} tensors"

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TextColumn("{task.fields[tensors]}"), TimeRemainingColumn(),
                        console=Console(file=sys.stderr), transient=True)
        self._task = self._bar.add_task(self.description, total=self.total_bytes, completed=self.bytes,
                                        tensors=self._tensor_text())
        self._bar.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
