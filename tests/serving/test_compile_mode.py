"""``backend.compile=true``: static KV caches per batch bucket, padding rows that must not change answers.

On CPU transformers does not compile, but the path is the same as on a GPU: requests are padded up to
the next bucket (here 3 requests -> a batch of 4) and decoded with a reused static cache.
"""

from __future__ import annotations

import json
import threading
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
                      "backend.max_batch_size=4", "backend.max_queue_delay_us=300000") as run:
        yield run


def generate(url: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    """Greedy, ``ignore_eos`` (so exactly ``max_tokens`` come back): (text, tokens)."""
    def tensor(name: str, value: object, dtype: str) -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, [1, 1], dtype)
        item.set_data_from_numpy(np.array([[value]], dtype=np.object_ if dtype == "BYTES" else dtype.lower()))
        return item

    sampling = json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}).encode()
    inputs = [tensor("text_input", prompt.encode(), "BYTES"), tensor("sampling_parameters", sampling, "BYTES"),
              tensor("exclude_input_in_output", True, "BOOL"), tensor("return_num_output_tokens", True, "BOOL")]
    result = grpcclient.InferenceServerClient(url).infer("llm", inputs)
    return result.as_numpy("text_output").reshape(-1)[0].decode(), int(result.as_numpy("num_output_tokens").sum())


def test_padded_batches_answer_as_single_requests(compiled_server: Launch) -> None:
    alone = [generate(compiled_server.grpc, prompt, 6 + i) for i, prompt in enumerate(PROMPTS)]
    assert [tokens for _, tokens in alone] == [6, 7, 8]  # ignore_eos: exactly max_tokens
    together: list[tuple[str, int] | None] = [None] * len(PROMPTS)

    def ask(index: int) -> None:
        together[index] = generate(compiled_server.grpc, PROMPTS[index], 6 + index)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stats = grpcclient.InferenceServerClient(compiled_server.grpc).get_inference_statistics("llm", as_json=True)
    batches = {int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]}
    assert 3 in batches  # the three requests ran as one batch (padded to the bucket of 4 inside the model)
    assert together == alone


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
        assert generate(compiled_server.grpc, prompt, 10) == (expected, 10)


def test_stops_cleanly(compiled_server: Launch) -> None:
    code, output = interrupt(compiled_server)
    assert code == 0, output
    assert_stopped_cleanly(compiled_server)
