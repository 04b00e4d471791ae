"""The serving child processes, ``tritonserver`` and the OpenAI front end: ports, start each in its own
process group, wait until ready, stop."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from launcher.errors import Interrupted, LauncherError, Problem, user_error
from launcher.spec import Action, DeploySpec, ServerSpec

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


def resolve_ports(server: ServerSpec, keys: tuple[str, ...] | None = None) -> ServerSpec:
    """``server`` with every ``0`` port of ``keys`` (default: all it listens on) replaced by a free one; fails
    naming each port in use."""
    ports = {key: getattr(server, key) for key in (server.port_keys() if keys is None else keys)}
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


def log_tail(path: Path) -> str:
    """The server log's error lines (first line of each message) and its last lines, indented."""
    try:
        lines = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    errors = [line.split("\\n", 1)[0] for line in lines if ERROR_LINE.match(line) and NOISE not in line]
    picked = errors[-LOG_ERROR_LINES:] + [line for line in lines[-LOG_TAIL_LINES:] if line not in errors]
    return "\n".join("  | " + line[:MAX_LINE] for line in picked)


class ChildProcess:
    """One child in its own process group, logging to ``log``, SIGTERMed if the launcher dies; a context
    manager that stops it (and whatever it started) on the way out."""

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

    def exit_status(self) -> int | None:
        """The child's exit status once it has exited, else None."""
        assert self.process is not None
        return self.process.poll()

    def failure(self, key: str, message: str, fix: str) -> LauncherError:
        tail = log_tail(self.log)
        return user_error(key, f"{message}; last lines of {self.log}:\n{tail}" if tail else message, fix)

    def start_failure(self, code: int) -> LauncherError:
        """The error for this child exiting with ``code`` while it starts."""
        return self.failure(Path(self.command[0]).name, f"exited with status {code} while starting",
                            f"fix what {self.log} reports")

    def check_running(self) -> None:
        """Raise :meth:`start_failure` if the child has exited."""
        code = self.exit_status()
        if code is not None:
            raise self.start_failure(code)

    def wait(self) -> int:
        """Block until the child exits by itself; its exit status."""
        assert self.process is not None
        return self.process.wait()

    def stop(self) -> None:
        """SIGTERM the child, SIGKILL it after a grace period, then kill whatever is left of its group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C
                self._kill_group()
                self.process.wait()
        self._kill_group()  # e.g. Python-backend stubs that outlived the server

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> ChildProcess:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class TritonProcess(ChildProcess):
    """A ``tritonserver`` child."""

    def start_failure(self, code: int) -> LauncherError:
        return self.failure("tritonserver", f"exited with status {code} while starting", f"fix what {self.log} reports")

    def wait_ready(self, grpc_url: str, timeout_s: float, watch: tuple[ChildProcess, ...] = ()) -> float:
        """Poll gRPC ``ServerReady`` until it answers; seconds since start. Stops the server on a timeout; fails
        at once when it, or one of the processes it ``watch``es (started beside it), exits.

        gRPC, not HTTP: tritonclient's HTTP client runs on gevent, whose hub re-throws a Ctrl-C that lands
        inside it into the main greenlet a second time, so the launcher would die of SIGINT after cleaning up.
        """
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            deadline = self.started_at + timeout_s
            while time.monotonic() < deadline:
                for process in (self, *watch):
                    process.check_running()
                with contextlib.suppress(Exception):  # not listening yet
                    if client.is_server_ready(client_timeout=2.0):
                        return time.monotonic() - self.started_at
                time.sleep(POLL_S)
        finally:
            client.close()
        self.stop()
        raise self.failure("server.start_timeout_s", f"tritonserver was not ready after {timeout_s:g} s",
                           f"raise server.start_timeout_s, or read {self.log}")


NOT_READY = "not ready"  # what the front end's /health/ready says until Triton and the model are


class FrontendProcess(ChildProcess):
    """The OpenAI front end (``python -m launcher.frontend``), ready once ``/health/ready`` answers 200 (Triton
    and its model are ready)."""

    def start_failure(self, code: int) -> LauncherError:
        return self.failure("server.openai", f"the OpenAI front end exited with status {code} while starting",
                            f"fix what {self.log} reports, or set server.openai=false")

    def wait_ready(self, root: str, timeout_s: float) -> float:
        """Poll ``root/health/ready``; seconds since start. Fails (server.openai) when the front end exits or
        reports that it cannot serve the model."""
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            self.check_running()
            try:
                with urllib.request.urlopen(f"{root}/health/ready", timeout=2.0):
                    return time.monotonic() - self.started_at
            except urllib.error.HTTPError as err:
                status = _status(err)
                if status not in (None, NOT_READY):
                    raise self.failure("server.openai", f"the OpenAI front end cannot serve the model: {status}",
                                       f"read {self.log}") from None
            except (OSError, ValueError):  # not listening yet
                pass
            time.sleep(POLL_S)
        raise self.failure("server.start_timeout_s", f"the OpenAI front end was not ready after {timeout_s:g} s",
                           f"raise server.start_timeout_s, or read {self.log}")


def _status(reply: urllib.error.HTTPError) -> str | None:
    """The ``status`` a ``/health/ready`` reply reports."""
    with contextlib.suppress(ValueError, OSError):
        status = json.loads(reply.read()).get("status")
        return status if isinstance(status, str) else None
    return None


def first_to_exit(*processes: ChildProcess) -> tuple[ChildProcess, int]:
    """Block until one of ``processes`` exits by itself; that one and its exit status."""
    while True:
        for process in processes:
            code = process.exit_status()
            if code is not None:
                return process, code
        time.sleep(POLL_S)


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (every interface: the loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


def openai_url(host: str, port: int | str) -> str:
    """The front end's API root, ``http://HOST:PORT/v1``."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def frontend_command(spec: DeploySpec, *, triton: str, host: str, port: str, python: str = sys.executable,
                     tokenizer: str | None = None, chat_template: str | None = None) -> list[str]:
    """``python -m launcher.frontend`` in front of the Triton at ``triton`` (HOST:GRPC_PORT), listening on
    ``host:port``, as ``spec.server.openai_*`` say; a deployment's limits (``model.max_output_len``, and the
    context of ``max_input_len`` + ``max_output_len``) too, while action=frontend takes the model config's.
    Values go as ``--flag=value``, so one starting with ``-`` stays a value."""
    model, server = spec.model, spec.server
    argv = [python, "-m", "launcher.frontend", f"--triton={triton}", f"--model={model.served_name}",
            f"--host={host}", f"--port={port}", *(f"--alias={alias}" for alias in server.openai_aliases)]
    if tokenizer:
        argv.append(f"--tokenizer={tokenizer}")
    if chat_template:
        argv.append(f"--chat-template={chat_template}")
    if spec.action != Action.frontend and model.max_output_len:
        argv.append(f"--max-tokens={model.max_output_len}")
        if model.max_input_len:
            argv.append(f"--max-model-len={model.max_input_len + model.max_output_len}")
    if server.openai_api_key_env:
        argv.append(f"--api-key-env={server.openai_api_key_env}")
    argv += [f"--max-body-bytes={server.openai_max_body_bytes}",
             f"--request-timeout-s={server.openai_request_timeout_s:g}",
             *(f"--cors-origin={origin}" for origin in server.openai_cors_origins)]
    return argv


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
