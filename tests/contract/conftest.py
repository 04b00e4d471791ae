"""One real server per backend that speaks Triton's vLLM-backend contract, shared by a test module.

The pytorch backend runs as a user runs it (``llm-launch action=serve``); the vllm backend as the vllm tests
serve it (rendered by the launcher, a real ``tritonserver`` with our ``vllm`` backend over real vLLM). Both
serve the same tiny random Llama (tests/fixtures/tiny_models.py, with 4096 positions instead of 256: its
rotary embeddings take any length), with room for 4000 new tokens, so a request runs long enough (some 16 s) to
be cancelled or overtaken by a later one even when a busy machine stalls the client for seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import write_hf
from tests.serving.conftest import serving_tiny
from tests.vllm.conftest import TINY as VLLM_TINY
from tests.vllm.conftest import render, triton

BACKENDS = ("pytorch", "vllm")
LONG_MAX_TOKENS = 4000
LONG = ("model.max_input_len=64", f"model.max_output_len={LONG_MAX_TOKENS}")
POSITIONS = 4096


@dataclass(frozen=True)
class Server:
    """A running server: its backend, addresses, served model name, log and tokenizer."""

    backend: str
    grpc: str
    http: str
    model: str
    log: Path
    tokenizer_dir: Path


@pytest.fixture(scope="session")
def contract_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_hf(tmp_path_factory.mktemp("contract-tiny") / "hf")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "max_position_embeddings": POSITIONS}))
    return directory


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, contract_hf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp(f"contract-{request.param}")
    if request.param == "pytorch":
        with serving_tiny(contract_hf, out, *LONG) as run:
            yield Server("pytorch", run.grpc, run.http, "llm", out / "dep" / "server.log", contract_hf)
    else:
        dep = render(out / "dep", *VLLM_TINY, f"model.checkpoint={contract_hf}", *LONG)
        with triton(out, [dep]) as served:
            yield Server("vllm", served.grpc, served.http, dep.spec.model.served_name, out / "server.log",
                         contract_hf)
