"""The conversion progress bar: rich on a terminal once a conversion has run for a second, nothing elsewhere."""

from __future__ import annotations

import io

import pytest

from launcher.convert import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_bytes_tensors_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    with progress.Progress("export tiny -> bfloat16", 300_000_000, 3) as bar:
        for _ in range(3):
            bar.advance(100_000_000, 1)
        bar._bar.refresh()
        shown = terminal.getvalue()
    assert "export tiny -> bfloat16" in shown and "3/3 tensors" in shown
    assert "300.0 MB" in shown and "/s" in shown  # bytes done of the total, and the rate


def test_elsewhere_nothing_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", pipe)
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    with progress.Progress("export", 10, 1) as bar:
        bar.advance(10, 1)
    assert pipe.getvalue() == "" and (bar.bytes, bar.tensors) == (10, 1)
