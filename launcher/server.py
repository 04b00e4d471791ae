"""A ``tritonserver`` child process: ports, start in its own process group, wait until ready, stop."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from launcher.errors import Interrupted, LauncherError, Problem, user_error
from launcher.spec import PORT_KEYS, ServerSpec

LOG_ERROR_LINES = 5
LOG_TAIL_LINES = 4
MAX_LINE = 400
ERROR_LINE = re.compile(r"E\d{4} ")  # Triton's error log lines: E<month><day> <time> ...
NOISE = "CudaDriverHelper has not been initialized"  # logged on every CPU-only start
STOP_TIMEOUT_S = 20.0  # the server is started with --exit-timeout-secs=10
POLL_S = 0.2


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (a closing socket in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def resolve_ports(server: ServerSpec) -> ServerSpec:
    """``server`` with every ``0`` port replaced by a free one; fails naming each port in use."""
    ports = {key: getattr(server, key) for key in PORT_KEYS}
    fresh = iter(free_ports(server.host, list(ports.values()).count(0)))
    problems = []
    for key, port in ports.items():
        if port == 0:
            ports[key] = next(fresh)
        elif not port_free(server.host, port):
            problems.append(Problem(f"server.{key}", f"port {port} on {server.host} is already in use",
                                    f"stop what uses it, or set server.{key}=<another port> "
                                    f"(server.{key}=0 picks a free one)"))
    if problems:
        raise LauncherError(*problems)
    return dataclasses.replace(server, **ports)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launcher itself dies (Linux), so nothing is orphaned."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_description(code: int) -> str:
    """``exited with status 3``, or ``crashed (SIGSEGV)`` for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"crashed ({signal.Signals(-code).name})"
        return f"ended by signal {-code}"
    return f"exited with status {code}"


def log_tail(path: Path) -> str:
    """The server log's error lines (first line of each message) and its last lines, indented."""
    try:
        lines = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    errors = [line.split("\\n", 1)[0] for line in lines if ERROR_LINE.match(line) and NOISE not in line]
    picked = errors[-LOG_ERROR_LINES:] + [line for line in lines[-LOG_TAIL_LINES:] if line not in errors]
    return "\n".join("  | " + line[:MAX_LINE] for line in picked)


class TritonProcess:
    """One ``tritonserver`` child in its own process group, logging to ``log``; a context manager."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(self.command, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def failure(self, key: str, message: str, fix: str) -> LauncherError:
        tail = log_tail(self.log)
        return user_error(key, f"{message}; last lines of {self.log}:\n{tail}" if tail else message, fix)

    def wait_ready(self, grpc_url: str, timeout_s: float) -> float:
        """Poll gRPC ``ServerReady`` until it answers; seconds since start. Stops the server on failure.

        gRPC, not HTTP: tritonclient's HTTP client runs on gevent, whose hub re-throws a Ctrl-C that lands
        inside it into the main greenlet a second time, so the launcher would die of SIGINT after cleaning up.
        """
        import tritonclient.grpc as grpcclient

        assert self.process is not None
        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            deadline = self.started_at + timeout_s
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise self.failure("tritonserver", f"{exit_description(code)} while starting",
                                       f"fix what {self.log} reports")
                with contextlib.suppress(Exception):  # not listening yet
                    if client.is_server_ready(client_timeout=2.0):
                        return time.monotonic() - self.started_at
                time.sleep(POLL_S)
        finally:
            client.close()
        self.stop()
        raise self.failure("server.start_timeout_s", f"tritonserver was not ready after {timeout_s:g} s",
                           f"raise server.start_timeout_s, or read {self.log}")

    def wait(self) -> int:
        """Block until the server exits by itself; its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after a grace period, then kill whatever is left of its group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C
                self._kill_group()
                self.process.wait()
        self._kill_group()  # Python-backend stubs that outlived the server

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> TritonProcess:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class Stop(Interrupted):
    """SIGTERM, delivered like Ctrl-C so that the same cleanup runs."""

    def __init__(self) -> None:
        super().__init__("SIGTERM")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Stop` in the main thread (as SIGINT raises KeyboardInterrupt)."""

    def handler(signum: int, frame: object) -> None:
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
