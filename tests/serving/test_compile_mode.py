"""``backend.compile=true``: a KV cache allocated whole, decode steps padded to power-of-two batches, padding
rows that must not change answers.

On CPU the step is not compiled, but the path is the same as on a GPU: three requests generating together
run as a batch of 4 (one idle row) over the full cache width, and rows that finish leave it.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.serving.conftest import Launch, assert_stopped_cleanly, interrupt, serving_tiny

pytestmark = pytest.mark.integration
PROMPTS = ["What is the capital of France?", "Tell me about Berlin", "Rome is"]


@pytest.fixture(scope="module")
def compiled_server(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    with serving_tiny(tiny_hf, tmp_path_factory.mktemp("compile"), "backend.compile=true",
                      "backend.max_batch_size=4") as run:
        yield run


def tensors(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    """Greedy, ``ignore_eos`` (so exactly ``max_tokens`` come back), prompt excluded, token count returned."""
    values = {"text_input": prompt, "exclude_input_in_output": True, "return_num_output_tokens": True,
              "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})}
    inputs = []
    for name, value in values.items():
        item = grpcclient.InferInput(name, [1], "BOOL" if isinstance(value, bool) else "BYTES")
        item.set_data_from_numpy(np.array([value if isinstance(value, bool) else value.encode()],
                                          dtype=bool if isinstance(value, bool) else np.object_))
        inputs.append(item)
    return inputs


def generate(url: str, requests: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """All ``requests`` (prompt, max_tokens) sent at once on one stream: [(text, tokens)] in order."""
    client = grpcclient.InferenceServerClient(url)
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for index, (prompt, max_tokens) in enumerate(requests):
            client.async_stream_infer("llm", tensors(prompt, max_tokens), request_id=str(index))
        answers = {}
        for _ in requests:
            result, error = replies.get(timeout=60)
            assert error is None, error
            answers[int(result.get_response().id)] = (result.as_numpy("text_output")[0].decode(),
                                                      int(result.as_numpy("num_output_tokens")[0]))
    finally:
        client.stop_stream()
        client.close()
    return [answers[index] for index in range(len(requests))]


def test_padded_batches_answer_as_single_requests(compiled_server: Launch) -> None:
    requests = [(prompt, 6 + i) for i, prompt in enumerate(PROMPTS)]
    alone = [generate(compiled_server.grpc, [request])[0] for request in requests]
    assert [tokens for _, tokens in alone] == [6, 7, 8]  # ignore_eos: exactly max_tokens
    assert generate(compiled_server.grpc, requests) == alone  # together: a batch of 3 in a bucket of 4


def test_greedy_answer_equals_transformers_generate(compiled_server: Launch, tiny_hf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            reference = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                                       pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        expected = tokenizer.decode(reference, skip_special_tokens=True)
        assert generate(compiled_server.grpc, [(prompt, 10)]) == [(expected, 10)]


def test_stops_cleanly(compiled_server: Launch) -> None:
    code, output = interrupt(compiled_server)
    assert code == 130, output
    assert_stopped_cleanly(compiled_server)
