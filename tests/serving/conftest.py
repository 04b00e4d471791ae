"""Serving fixtures: ``llm-launch`` as a user runs it, in a subprocess we can Ctrl-C, on free ports."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launcher.server import port_free
from tests.conftest import LLM_LAUNCH, REPO
from tests.fixtures.tiny_models import write_hf

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
FREE_PORTS = ("server.http_port=0", "server.grpc_port=0", "server.metrics_port=0", "server.openai_port=0")
TINY = ("model=tiny-llama", "model.max_input_len=128")
STARTING = re.compile(r"starting tritonserver \(pid (\d+)\): http ([\d.]+):(\d+), grpc [\d.]+:(\d+), "
                      r"metrics [\d.]+:(\d+)")
STARTING_OPENAI = re.compile(r"starting openai front end \(pid (\d+)\): (http://[\d.]+:(\d+)/v1); log ")


@dataclass
class Launch:
    """A running ``llm-launch`` and what it printed so far."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    server_pid: int | None = None
    ports: tuple[int, int, int] = (0, 0, 0)  # http, grpc, metrics
    frontend_pid: int | None = None  # the OpenAI front end's, once it started
    openai_url: str = ""  # http://127.0.0.1:PORT/v1
    openai_port: int = 0

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        """The first printed line starting with ``prefix``; fails with the output if the run ends first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            self.record(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}; output so far:\n" + "\n".join(self.output))

    def finish(self, timeout_s: float = 60) -> tuple[int, str]:
        """Exit status and the whole output once the launcher has exited."""
        code = self.process.wait(timeout_s)
        while (line := self.lines.get(timeout=5)) is not None:
            self.record(line)
        return code, "\n".join(self.output)

    def record(self, line: str) -> None:
        self.output.append(line)
        if match := STARTING.match(line):
            self.server_pid = int(match[1])
            self.ports = (int(match[3]), int(match[4]), int(match[5]))
        if match := STARTING_OPENAI.match(line):
            self.frontend_pid, self.openai_url, self.openai_port = int(match[1]), match[2], int(match[3])

    def kill(self) -> None:
        """Last resort (a failed test): kill the launcher; the server dies with it (PDEATHSIG)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in (self.server_pid, self.frontend_pid):
            if pid is not None:
                wait_gone(pid, 30)


def launch(*overrides: str, env: dict[str, str] | None = None) -> Launch:
    """Start ``llm-launch`` with ``overrides`` (stdout and stderr merged into ``Launch.lines``; ``env`` added to
    the environment)."""
    process = subprocess.Popen([*LLM_LAUNCH, *overrides], cwd=REPO, env={**ENV, **(env or {})}, text=True,
                               bufsize=1, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = Launch(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.lines.put(line.rstrip("\n"))
        run.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return run


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def assert_stopped_cleanly(run: Launch) -> None:
    """The server's and the front end's whole process groups are gone and their ports can be bound again."""
    assert run.server_pid is not None
    for pid, ports in ((run.server_pid, run.ports), (run.frontend_pid, (run.openai_port,))):
        if pid is None:
            continue
        assert wait_gone(pid, 10), f"process {pid} still running"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # no Python-backend stub left either
        for port in ports:
            assert port_free("127.0.0.1", port), f"port {port} still in use"


def interrupt(run: Launch, signum: int = signal.SIGINT) -> tuple[int, str]:
    run.process.send_signal(signum)
    return run.finish()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for every test that serves SmolLM2 (the GGUF -> HF export runs once)."""
    return tmp_path_factory.mktemp("smollm2-cache")


@contextlib.contextmanager
def serving_tiny(tiny_hf: Path, out: Path, *overrides: str) -> Iterator[Launch]:
    """``llm-launch action=serve`` of the tiny Llama, ready and smoked; stopped at the end in any case."""
    run = launch(*TINY, f"model.checkpoint={tiny_hf}", f"output_dir={out / 'dep'}", f"cache_dir={out / 'cache'}",
                 *overrides, *FREE_PORTS, "action=serve")
    try:
        run.wait_for("serving '", timeout_s=180)
        yield run
    finally:
        if run.process.poll() is None:
            interrupt(run)
        run.kill()


@pytest.fixture(scope="module")
def tiny_server(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    with serving_tiny(tiny_hf, tmp_path_factory.mktemp("serve")) as run:
        yield run
