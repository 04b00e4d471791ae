"""Faults while serving: each ends in one clear message, no orphan process, nothing half-written."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from launcher.errors import USER_ERROR_EXIT
from tests.serving.conftest import FREE_PORTS, TINY, assert_stopped_cleanly, interrupt, launch, wait_gone

pytestmark = pytest.mark.integration


def test_port_in_use_names_the_port_and_the_override(tiny_hf: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = launch(*TINY, f"model.checkpoint={tiny_hf}", f"output_dir={tmp_path / 'dep'}", *FREE_PORTS,
                     f"server.grpc_port={port}", "action=smoke")
        code, output = run.finish(timeout_s=120)
    assert code == USER_ERROR_EXIT, output
    assert f"server.grpc_port: port {port} on 127.0.0.1 is already in use" in output
    assert "server.grpc_port=0" in output and "Traceback" not in output and "starting" not in output


def test_server_dying_during_start_shows_its_log(tiny_hf: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_hf, tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{ not json")  # the model fails in initialize()
    run = launch(*TINY, f"model.checkpoint={broken}", f"output_dir={tmp_path / 'dep'}", *FREE_PORTS,
                 "action=smoke")
    code, output = run.finish(timeout_s=180)
    assert code == USER_ERROR_EXIT, output
    assert "tritonserver: exited with status" in output and "while starting" in output
    assert "server.log" in output and "  | " in output  # the log's last lines
    assert "Traceback (most recent call last)" not in output.split("  | ")[0]
    assert run.server_pid is not None and wait_gone(run.server_pid, 10)


def test_sigint_while_starting_stops_everything(tiny_hf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = launch(*TINY, f"model.checkpoint={tiny_hf}", "precision=bf16", f"output_dir={tmp_path / 'dep'}",
                 f"cache_dir={cache}", *FREE_PORTS, "action=serve")
    try:
        run.wait_for("starting tritonserver", timeout_s=120)
        code, output = interrupt(run)
        assert code == 130, output
        assert "stopped by SIGINT during action=serve (while starting); nothing was left half-written" in output
        assert_stopped_cleanly(run)
        entries = list(cache.iterdir())  # the bf16 export finished before the server started
        assert len(entries) == 1 and not entries[0].name.startswith("."), entries
    finally:
        run.kill()


def test_numpy_2_is_refused_before_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from launcher import triton
    from launcher.errors import LauncherError

    monkeypatch.setattr(metadata, "version", lambda name: "2.1.0")
    with pytest.raises(LauncherError, match=r"numpy: .*has numpy 2\.1\.0.*needs numpy < 2"):
        triton.require_numpy_below_2()
