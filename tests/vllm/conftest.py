"""vLLM fixtures: render with the launcher, serve with a real ``tritonserver`` and our ``vllm`` backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from launcher.deployment import Deployment, resolve
from launcher.pipeline import deploy, typed_spec
from launcher.server import TritonProcess, free_ports
from launcher.triton import find_triton
from tests.conftest import compose_spec

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 240.0
TINY = ("model=tiny-llama", "model.max_input_len=192", "model.served_name=tiny")


def render(output_dir: Path, *overrides: str, export: bool = False, backend: str = "vllm") -> Deployment:
    """``llm-launch backend=vllm action=render`` (after ``action=export`` when asked) into ``output_dir``
    (``backend``: another backend's repository, to serve beside the vllm one)."""
    base = (f"backend={backend}", f"output_dir={output_dir}", *overrides)
    if export:
        deploy(compose_spec([*base, "action=export"]), base)
    cfg = compose_spec([*base, "action=render"])
    deploy(cfg, base)
    return resolve(typed_spec(cfg))


def engine_args(output_dir: Path, model: str) -> dict:
    return json.loads((output_dir / "model_repository" / model / "1" / "model.json").read_text())


@dataclass
class Served:
    process: TritonProcess
    http: str
    grpc: str
    ready_s: float


def server_env(root: Path) -> dict[str, str]:
    return {**find_triton().environment(), "HF_HUB_OFFLINE": "1", "VLLM_CACHE_ROOT": str(root / "vllm-cache"),
            "VLLM_NO_USAGE_STATS": "1"}


@contextmanager
def triton(root: Path, deployments: list[Deployment], *, ready: bool = True) -> Iterator[Served]:
    """One ``tritonserver`` over the deployments' repositories, on free loopback ports; always stopped."""
    http, grpc, metrics = free_ports("127.0.0.1", 3)
    repositories = [f"--model-repository={dep.paths.repository.resolve()}" for dep in deployments]
    command = [str(find_triton().binary), *repositories,
               f"--backend-directory={deployments[0].paths.backends.resolve()}", "--http-address=127.0.0.1",
               f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
               "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=10"]
    with TritonProcess(command, server_env(root), root / "server.log") as process:
        ready_s = process.wait_ready(f"127.0.0.1:{grpc}", READY_TIMEOUT_S) if ready else 0.0
        yield Served(process, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", ready_s)


def reference(model_json: dict, root: Path, max_tokens: int, prompts: list[str]) -> subprocess.Popen[str]:
    """Start ``vllm.LLM`` on the same engine arguments in a subprocess; read it with :func:`reference_texts`."""
    path = root / "reference-model.json"
    path.write_text(json.dumps(model_json))
    return subprocess.Popen([sys.executable, str(HERE / "reference.py"), str(path), str(max_tokens), *prompts],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **server_env(root)})


def reference_texts(process: subprocess.Popen[str], timeout_s: float = 300) -> list[str]:
    out, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, err[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("REFERENCE "))
    return json.loads(line.removeprefix("REFERENCE "))
