"""Families deployed with ``model=auto``: tiny random HF models of each family (transformers' own classes, our
weights), rendered by the launcher, served together by one real ``tritonserver`` per backend."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from launcher.deployment import Deployment, resolve
from launcher.pipeline import deploy, typed_spec
from launcher.server import TritonProcess, free_ports
from launcher.triton import find_triton
from tests.conftest import compose_spec
from tests.fixtures.tiny_families import write_family

SERVED = ("qwen2", "qwen3", "gemma2", "phi3", "mixtral", "granite")  # the families the issue names
PROMPT = "Paris is the capital of France. Berlin is"
GREEDY_TOKENS = 8
READY_TIMEOUT_S = 420.0


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family-checkpoints")
    return {family: write_family(family, root / family) for family in SERVED}


def render(root: Path, checkpoint: Path, *overrides: str) -> Deployment:
    """``llm-launch model=auto model.checkpoint=<dir> ... action=render`` into ``root/<dir name>``."""
    base = ("model=auto", f"model.checkpoint={checkpoint}", f"output_dir={root / checkpoint.name}",
            f"cache_dir={root / 'cache'}", f"model.served_name={checkpoint.name}", *overrides)
    cfg = compose_spec([*base, "action=render"])
    deploy(cfg, base)
    return resolve(typed_spec(cfg), base)


@contextmanager
def triton(root: Path, deployments: list[Deployment], env: dict[str, str]) -> Iterator[str]:
    """One ``tritonserver`` over every deployment's repository (several models, one server); its HTTP address."""
    http, grpc, metrics = free_ports("127.0.0.1", 3)
    command = [str(find_triton().binary),
               *(f"--model-repository={dep.paths.repository.resolve()}" for dep in deployments),
               f"--backend-directory={deployments[0].paths.backends.resolve()}", "--http-address=127.0.0.1",
               f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
               "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=10"]
    with TritonProcess(command, {**find_triton().environment(), "HF_HUB_OFFLINE": "1", **env},
                       root / "server.log") as process:
        process.wait_ready(f"127.0.0.1:{grpc}", READY_TIMEOUT_S)
        yield f"127.0.0.1:{http}"


def greedy_tokens(url: str, model: str, n: int = GREEDY_TOKENS) -> list[int]:
    """``n`` greedy token ids through Triton's generate endpoint (the vLLM-backend contract: logprobs carry ids)."""
    sampling = {"temperature": 0, "max_tokens": n, "ignore_eos": True, "logprobs": 0}
    body = {"text_input": PROMPT, "sampling_parameters": json.dumps(sampling), "return_logprobs": True,
            "exclude_input_in_output": True}
    request = urllib.request.Request(f"http://{url}/v2/models/{model}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        answer = json.loads(reply.read())
    logprobs = answer["logprobs"]
    entries = json.loads(logprobs[0] if isinstance(logprobs, list) else logprobs)
    return [int(next(iter(entry))) for entry in entries]
