"""``action=bench`` for one spec: what it checks, how it serves the spec, how it waits for the OpenAI endpoint.

Serving is ``llm-launch action=serve`` itself, in a child process replaying the rendered ``spec.yaml`` on ports
picked here: the same path a user runs in another shell (Triton, smoke query, OpenAI front end), so nothing of
serving is copied here. The child renders its own copy into ``output_dir/bench/served`` (a render replaces its
whole directory: into ``output_dir`` it would remove the bench's files). ``bench.url`` attaches to an endpoint that
already serves instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from launcher.bench.runner import run
from launcher.bench.settings import BenchSettings
from launcher.bench.summary import Summary
from launcher.errors import LauncherError, Problem, user_error
from launcher.spec import Action, DeploySpec, ServerSpec

BENCH_DIR = "bench"  # under output_dir
SERVE_LOG = "serve.log"  # what the serving child printed, in the bench dir
SERVED = "served"  # the serving child's output_dir, in the bench dir
SERVING_TARGETS = ("local",)  # where action=bench starts the server itself
READY_MARGIN_S = 120.0  # beyond server.start_timeout_s: the child's own start-up, export check and smoke query
POLL_S = 0.5
LOG_LINES = 6
ANY_HOST = ("0.0.0.0", "::", "")


def problems(spec: DeploySpec) -> list[Problem]:
    """The bench settings' problems (every one), and a target that action=bench cannot serve on itself."""
    if spec.action != Action.bench:
        return []
    try:
        BenchSettings.from_spec(spec.bench)
    except LauncherError as err:
        found = list(err.problems)
    else:
        found = []
    key_env = spec.server.openai_api_key_env
    if key_env and not api_key(spec):
        found.append(Problem("server.openai_api_key_env", f"the variable {key_env} is not set (or empty), and "
                             "aiperf needs the front end's key", f"export {key_env}=<the key>"))
    if spec.bench.url:
        return found
    if spec.target.name not in SERVING_TARGETS:
        found.append(Problem("bench.url", f"action=bench serves the spec itself only with target=local, not "
                             f"target={spec.target.name}", "serve it there (action=serve) and bench its OpenAI "
                             "endpoint: bench.url=http://<host>:<port>/v1"))
    if not spec.server.openai:
        found.append(Problem("server.openai", "is false, but action=bench measures the OpenAI front end",
                             "drop server.openai=false, or bench another endpoint with bench.url=..."))
    return found


def api_key(spec: DeploySpec) -> str | None:
    """The front end's API key, from the variable ``server.openai_api_key_env`` names (None without one)."""
    key_env = spec.server.openai_api_key_env
    return (os.environ.get(key_env, "").strip() or None) if key_env else None


def bench_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / BENCH_DIR


def serve_command(output_dir: Path, server: ServerSpec) -> list[str]:
    """``llm-launch action=serve`` of the spec rendered in ``output_dir``, listening where ``server`` says, its
    render in ``output_dir/bench/served``."""
    ports = [f"server.{key}={getattr(server, key)}" for key in server.port_keys()]
    served = str((bench_dir(output_dir) / SERVED).resolve()).replace("'", "\\'")
    return [sys.executable, "-m", "launcher.cli", f"--config-dir={output_dir.resolve()}", "--config-name=spec",
            "action=serve", f"output_dir='{served}'", *ports]


def endpoint(server: ServerSpec) -> str:
    """The OpenAI front end's base URL (``http://host:port/v1``); a wildcard host is reached on loopback."""
    host = "127.0.0.1" if server.host in ANY_HOST else server.host
    return f"http://{host}:{server.openai_port}/v1"


def wait_ready(url: str, serving: subprocess.Popen[bytes], log: Path, timeout_s: float,
               ready_path: str = "/health/ready") -> float:
    """Poll ``ready_path`` beside ``url`` (its ``/v1``) until it answers; seconds waited. Fails when the serving
    child exits first. The default is our front end's (200 once Triton is ready too); vLLM's server has ``/health``."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    ready = url.rstrip("/").removesuffix("/v1") + ready_path
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        status = serving.poll()
        if status is not None:
            raise user_error("action=bench", f"the deployment stopped while starting (status {status}); its last "
                             f"lines:\n{log_tail(log)}", f"fix what {log} reports")
        try:
            with opener.open(ready, timeout=2):
                return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            time.sleep(POLL_S)
    raise user_error("server.start_timeout_s", f"no OpenAI endpoint at {url} after {timeout_s:g} s",
                     f"raise server.start_timeout_s, or read {log}")


def log_tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "  | (no output)"
    return "\n".join(f"  | {line[:300]}" for line in lines[-LOG_LINES:]) or "  | (no output)"


def measure(spec: DeploySpec, tokenizer_dir: Path, url: str, serving: subprocess.Popen[bytes] | None = None
            ) -> Summary:
    """aiperf against ``url`` with the spec's ``bench`` settings, results in ``output_dir/bench``; with ``serving``
    (the child that serves the spec) it first waits until the endpoint answers."""
    from rich.console import Console

    console = Console()
    out_dir = bench_dir(spec.output_dir)
    if serving is not None:
        log = out_dir / SERVE_LOG
        with console.status(f"serving {spec.name} (pid {serving.pid}, log {log}); waiting for {url}"):
            ready_s = wait_ready(url, serving, log, spec.server.start_timeout_s + READY_MARGIN_S)
        console.print(f"{spec.name} serves {url} after {ready_s:.1f} s", markup=False)
    return run(url, spec.model.served_name, tokenizer_dir, BenchSettings.from_spec(spec.bench), out_dir,
               name=spec.name, console=console, api_key=api_key(spec))
