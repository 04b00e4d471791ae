"""SmolLM2 on both CPU backends behind the OpenAI front end, shared by a test module.

One real ``tritonserver`` serves two deployments of the default model (SmolLM2-135M-Instruct, exported once
into the launcher's cache): the pytorch backend's as ``pt``, the vllm backend's as ``vl`` (one server: the two
models load side by side). Each backend's front end is started as a user starts it, ``python -m
launcher.frontend`` on a free port with an API key, and stopped with SIGTERM (it must exit 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests

from launcher.query import connect
from tests.conftest import REPO
from tests.vllm.conftest import render, triton

BACKENDS = ("pytorch", "vllm")
NAMES = {"pytorch": "pt", "vllm": "vl"}  # Triton model names
KEY_ENV = "LLM_LAUNCH_TEST_OPENAI_KEY"
KEY = "frontend-test-key"
BODY_LIMIT = 64 * 1024
MAX_TOKENS, MAX_MODEL_LEN = 256, 1280  # SmolLM2's model.max_output_len, + its max_input_len
READY_TIMEOUT_S = 300.0  # vLLM's engine, on two busy cores
TIMEOUT_S = 2  # --request-timeout-s of the "timeout" front end


@dataclass(frozen=True)
class FrontEnd:
    """A running front end over one backend's model."""

    backend: str
    url: str  # http://127.0.0.1:PORT/v1
    grpc: str  # the Triton server's
    model: str  # the Triton model's name
    served: str  # its id in the API
    alias: str
    server_log: Path  # Triton's
    log: Path  # the front end's
    tokenizer_dir: Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)


@contextlib.contextmanager
def started(command: list[str], log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A front end and its URL, once it says it listens (stderr to ``log``); stopped with SIGTERM, which it
    must answer by exiting 0."""
    with log.open("w") as err:
        process = subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=err,
                                   env={**os.environ, KEY_ENV: KEY, "HF_HUB_OFFLINE": "1"})
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("openai front end on http://"), f"printed {line!r}; log:\n{log.read_text()[-3000:]}"
        yield process, line.split()[-1]
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        assert code == 0, f"the front end exited {code} on SIGTERM; its log:\n{log.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def frontend_command(grpc: str, backend: str) -> list[str]:
    return [sys.executable, "-m", "launcher.frontend", "--triton", grpc, "--model", NAMES[backend],
            "--served-name", f"smollm2-{backend}", "--alias", "smollm2", "--port", "0", "--max-tokens",
            str(MAX_TOKENS), "--max-model-len", str(MAX_MODEL_LEN), "--api-key-env", KEY_ENV, "--max-body-bytes",
            str(BODY_LIMIT)]


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FrontEnd]]:
    """Both backends' front ends, and a third over pytorch that gives up after TIMEOUT_S ("timeout"); they
    start while Triton loads the models, and wait for it."""
    root = tmp_path_factory.mktemp("frontend")
    deps = {backend: render(root / backend, f"model.served_name={NAMES[backend]}", export=True, backend=backend)
            for backend in BACKENDS}
    backends = {"pytorch": "pytorch", "vllm": "vllm", "timeout": "pytorch"}
    # one server for both (the vllm deployment's backend directory holds the python backend too)
    with triton(root, [deps["vllm"], deps["pytorch"]], ready=False) as served, contextlib.ExitStack() as stack:
        commands = {name: frontend_command(served.grpc, backend) for name, backend in backends.items()}
        commands["timeout"] += ["--request-timeout-s", str(TIMEOUT_S)]
        urls = {name: stack.enter_context(started(command, root / f"openai-{name}.log"))[1]
                for name, command in commands.items()}
        served.process.wait_ready(served.grpc, READY_TIMEOUT_S)
        fronts = {}
        for name, backend in backends.items():
            client, _, interface = connect(served.grpc, "grpc", NAMES[backend], 30)
            client.close()
            assert interface.tokenizer_dir is not None
            fronts[name] = FrontEnd(backend, urls[name], served.grpc, NAMES[backend], f"smollm2-{backend}",
                                    "smollm2", root / "server.log", root / f"openai-{name}.log",
                                    Path(interface.tokenizer_dir))
            deadline = time.monotonic() + READY_TIMEOUT_S
            while requests.get(f"{fronts[name].root}/health/ready", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, fronts[name].log.read_text()[-3000:]
                time.sleep(0.1)
        yield fronts


@pytest.fixture(scope="module", params=BACKENDS)
def front(request: pytest.FixtureRequest, fronts: dict[str, FrontEnd]) -> FrontEnd:
    return fronts[request.param]


@pytest.fixture(scope="module")
def impatient(fronts: dict[str, FrontEnd]) -> FrontEnd:
    """The pytorch front end with a request timeout of TIMEOUT_S."""
    return fronts["timeout"]
