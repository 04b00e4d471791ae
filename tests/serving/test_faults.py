"""Faults while serving: each ends in one clear message, no orphan process, nothing half-written."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from launcher.errors import USER_ERROR_EXIT
from tests.conftest import REPO
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


def test_openai_port_in_use_names_the_key(tiny_hf: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = launch(*TINY, f"model.checkpoint={tiny_hf}", f"output_dir={tmp_path / 'dep'}", *FREE_PORTS,
                     f"server.openai_port={port}", "action=smoke")
        code, output = run.finish(timeout_s=120)
    assert code == USER_ERROR_EXIT, output
    assert output.count("\n") == 0, output
    assert output.startswith(f"error server.openai_port: port {port} on 127.0.0.1 is already in use")
    assert "server.openai_port=0 picks a free one" in output


def test_frontend_failing_to_start_is_one_line_with_its_log(tiny_hf: Path, tmp_path: Path) -> None:
    """A front end that cannot start (here: its Python's fastapi is broken) stops the starting server too."""
    shadow = tmp_path / "shadow" / "fastapi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("this fastapi is broken on purpose")\n')
    run = launch(*TINY, f"model.checkpoint={tiny_hf}", f"output_dir={tmp_path / 'dep'}", *FREE_PORTS,
                 "action=smoke", env={"PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)])})
    code, output = run.finish(timeout_s=180)
    assert code == USER_ERROR_EXIT, output
    problem = output[output.index("error "):]
    assert problem.startswith("error server.openai: the OpenAI front end exited with status 1 while starting; "
                              f"last lines of {tmp_path / 'dep' / 'openai.log'}:\n  | "), output
    assert problem.splitlines()[-1].startswith("  | ImportError: this fastapi is broken on purpose (fix what ")
    assert problem.rstrip().endswith("or set server.openai=false)")
    assert "ready in" not in output and "Traceback (most recent call last)" not in problem.split("  | ")[0]
    assert run.server_pid is not None and wait_gone(run.server_pid, 10)
    assert run.frontend_pid is not None and wait_gone(run.frontend_pid, 10)


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
    """Without the front end (server.openai=false) none starts; Ctrl-C while the server starts stops it."""
    cache = tmp_path / "cache"
    run = launch(*TINY, f"model.checkpoint={tiny_hf}", "precision=bf16", f"output_dir={tmp_path / 'dep'}",
                 f"cache_dir={cache}", *FREE_PORTS, "server.openai=false", "action=serve")
    try:
        run.wait_for("starting tritonserver", timeout_s=120)
        code, output = interrupt(run)
        assert code == 130, output
        assert "openai" not in output and run.frontend_pid is None
        assert "launcher.frontend" not in (tmp_path / "dep" / "launch.sh").read_text()
        assert "SIGINT: tritonserver stopped" in output
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
