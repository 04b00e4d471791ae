"""The tiny Llama and SmolLM2 served by a real ``tritonserver`` through our ``vllm`` backend and real vLLM.

One server holds both models for the whole module (two engines load in parallel). The last test
stops it with SIGTERM and checks that every process it started is gone.
"""

from __future__ import annotations

import json
import queue
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.fixtures.tiny_models import write_hf
from tests.vllm.conftest import TINY, Served, engine_args, reference, reference_texts, render, triton

pytestmark = pytest.mark.integration
QUESTION = "What is the capital of France?"
LONG = {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
MODELS = ("tiny", "llm")  # served names: the tiny Llama, SmolLM2-135M-Instruct


@dataclass
class Module:
    served: Served
    root: Path
    chat_prompt: str  # QUESTION in SmolLM2's chat template
    reference: list[str]  # vllm.LLM's greedy answer to chat_prompt on the same export and arguments


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    root = tmp_path_factory.mktemp("vllm-serving")
    tiny = render(root / "tiny", *TINY, f"model.checkpoint={write_hf(root / 'tiny-hf')}")
    smol = render(root / "smol", export=True)  # the default model; export cached under cache_dir
    smol_args = engine_args(root / "smol", "llm")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_args["model"])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    ref = reference(smol_args, root, 32, [chat])  # runs while the server loads
    try:
        with triton(root, [tiny, smol]) as served:
            yield Module(served, root, chat, reference_texts(ref))
    finally:
        if ref.poll() is None:
            ref.kill()


def inputs(prompt: str, params: dict, *, stream: bool, exclude: bool | None = True) -> list:
    values = {"text_input": np.array([prompt.encode()], dtype=np.object_),
              "stream": np.array([stream]),
              "sampling_parameters": np.array([json.dumps(params).encode()], dtype=np.object_)}
    if exclude is not None:
        values["exclude_input_in_output"] = np.array([exclude])
    tensors = []
    for name, value in values.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else "BOOL")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


class Stream:
    """A gRPC bidirectional stream; responses grouped by request id, with their final flags."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, model: str, request_id: str, tensors: list) -> None:
        self.client.async_stream_infer(model, tensors, request_id=request_id, enable_empty_final_response=True)

    def collect(self, count: int, timeout_s: float = 120) -> dict[str, list[tuple[str, bool]]]:
        """``request id -> [(text, final), ...]`` until ``count`` requests got their final response."""
        got: dict[str, list[tuple[str, bool]]] = {}
        finals = 0
        while finals < count:
            result, error = self.results.get(timeout=timeout_s)
            if error is not None:
                raise AssertionError(f"error response: {error}")
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            text = result.as_numpy("text_output")
            got.setdefault(response.id, []).append((text[0].decode() if text is not None else "", final))
            finals += final
        return got

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def ask(served: Served, model: str, prompt: str, params: dict, *, stream: bool,
        exclude: bool | None = True) -> list[tuple[str, bool]]:
    client = Stream(served.grpc)
    try:
        client.send(model, "1", inputs(prompt, params, stream=stream, exclude=exclude))
        return client.collect(1)["1"]
    finally:
        client.close()


def test_ready(module: Module) -> None:
    assert 0 < module.served.ready_s < 240
    for model in MODELS:
        assert requests.get(f"http://{module.served.http}/v2/models/{model}/ready", timeout=5).status_code == 200


@pytest.mark.parametrize("model", MODELS)
def test_non_streaming(module: Module, model: str) -> None:
    responses = ask(module.served, model, "Paris is the capital of", LONG, stream=False)
    assert len(responses) == 1 and responses[0][1]
    assert responses[0][0]
    with_prompt = ask(module.served, model, "Paris is the capital of", LONG, stream=False, exclude=None)
    assert with_prompt == [("Paris is the capital of" + responses[0][0], True)]  # the backend's default


@pytest.mark.parametrize("model", MODELS)
def test_streaming(module: Module, model: str) -> None:
    pieces = ask(module.served, model, "Paris is the capital of", LONG, stream=True)
    assert len(pieces) >= 4
    assert [final for _, final in pieces] == [False] * (len(pieces) - 1) + [True]
    whole = ask(module.served, model, "Paris is the capital of", LONG, stream=False)[0][0]
    assert "".join(text for text, _ in pieces) == whole


@pytest.mark.parametrize("model", MODELS)
def test_eight_concurrent(module: Module, model: str) -> None:
    client = Stream(module.served.grpc)
    try:
        for i in range(8):
            client.send(model, str(i), inputs(f"Request {i}: the capital of", LONG, stream=i % 2 == 0))
        got = client.collect(8)
    finally:
        client.close()
    assert sorted(got) == [str(i) for i in range(8)]
    assert all("".join(text for text, _ in pieces) and pieces[-1][1] for pieces in got.values())


@pytest.mark.parametrize("model", MODELS)
def test_cancel(module: Module, model: str) -> None:
    log = module.root / "server.log"
    done = "[vllm] Successfully cancelled the request"
    before = log.read_text().count(done)
    client = Stream(module.served.grpc)
    endless = {"max_tokens": 200, "temperature": 0.0, "ignore_eos": True}
    client.send(model, "cancel-me", inputs("Count forever:", endless, stream=True))
    first, error = client.results.get(timeout=120)
    assert error is None and first.as_numpy("text_output") is not None
    client.close(cancel=True)
    deadline = time.monotonic() + 20
    while log.read_text().count(done) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count(done) == before + 1  # NVIDIA's backend's log lines
    assert log.read_text().count("[vllm] Cancelling the request") == before + 1
    assert ask(module.served, model, "Paris is the capital of", LONG, stream=False)[0][0]  # still serving


def test_bad_sampling_parameters(module: Module) -> None:
    client = Stream(module.served.grpc)
    try:
        client.send("tiny", "bad", inputs("hello", {"max_tokens": 4, "temprature": 0.5}, stream=False))
        _, error = client.results.get(timeout=60)
    finally:
        client.close()
    assert error is not None and "unknown key 'temprature'" in str(error)


def test_smollm2_answers_paris_like_vllm_llm(module: Module) -> None:
    reply = requests.post(f"http://{module.served.http}/v2/models/llm/generate", timeout=60, json={
        "text_input": module.chat_prompt, "exclude_input_in_output": True,
        "parameters": {"max_tokens": 32, "temperature": 0.0}}).json()
    assert "Paris" in reply["text_output"], reply
    assert [reply["text_output"]] == module.reference  # greedy through Triton == greedy from vllm.LLM


def test_clean_stop(module: Module) -> None:
    """SIGTERM: the server exits by itself, with its stubs, vLLM engine cores and workers (no group kill)."""
    process = module.served.process.process
    assert process is not None
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("EngineCore" in " ".join([*p.cmdline(), p.name()]) for p in children)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [p.pid for p in alive]
