"""How one aiperf run is supervised: its log messages, its exit status, the time limit, its process group.

The child here is a shell script written in the test that prints aiperf-style log lines, not aiperf (the real
aiperf runs in test_vllm_bench.py): what is tested is our supervision of any child.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from launcher.bench.aiperf import log_message, run_aiperf
from launcher.errors import LauncherError

LINES = ("23:32:37.211 INFO     Dataset configured in 3.61 seconds (dataset_manager.py:294)\n"
         "a line of aiperf's console table\n"
         "23:32:39.341 ERROR    Error in aiohttp request: refused (aiohttp_transport.py:12)\n")


def test_log_lines_are_parsed() -> None:
    first, table, error = LINES.splitlines()
    assert log_message(first) == ("INFO", "Dataset configured in 3.61 seconds")
    assert log_message(table) is None
    assert log_message(error) == ("ERROR", "Error in aiohttp request: refused")


def test_messages_reach_the_callback_and_the_log(tmp_path: Path) -> None:
    messages: list[str] = []
    log = tmp_path / "c1" / "aiperf-output.log"
    run_aiperf(["printf", LINES.replace("%", "%%")], tmp_path / "hub", log, 30, messages.append)
    assert messages == ["Dataset configured in 3.61 seconds", "Error in aiohttp request: refused"]
    assert log.read_text() == LINES


def test_failure_shows_aiperfs_errors(tmp_path: Path) -> None:
    (tmp_path / "lines").write_text(LINES)
    with pytest.raises(LauncherError) as caught:
        run_aiperf(["sh", "-c", f"cat {tmp_path / 'lines'}; exit 3"], tmp_path / "hub", tmp_path / "out.log", 30,
                   lambda message: None)
    (problem,) = caught.value.problems
    assert problem.key == "aiperf"
    assert problem.message == "exited with status 3: Error in aiohttp request: refused"
    assert str(tmp_path / "out.log") in problem.fix


def test_time_limit_stops_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    start = time.monotonic()
    with pytest.raises(LauncherError) as caught:
        run_aiperf(["sh", "-c", script], tmp_path / "hub", tmp_path / "out.log", 1.0, lambda message: None)
    assert time.monotonic() - start < 15
    assert caught.value.problems[0].key == "bench.timeout_s"
    grandchild = int(pid_file.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_temp_dir_is_private_and_removed(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    run_aiperf(["sh", "-c", 'echo "$TMPDIR"; touch "$TMPDIR/left-behind"'], tmp_path / "hub", out, 30,
               lambda message: None)
    temp_dir = Path(out.read_text().strip())
    assert temp_dir.name.startswith("llm-launch-aiperf-") and not temp_dir.exists()
