"""A real tritonserver serving the rendered repository of a tiny random Llama (one server per module).

The tests share one ``llm-launch action=serve``; the last one stops it with SIGINT, as Ctrl-C does.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from launcher import query
from tests.serving.conftest import Launch, assert_stopped_cleanly, interrupt

pytestmark = pytest.mark.integration
PROMPT = "What is the capital of France?"


def infer(client: httpclient.InferenceServerClient, prompt: str, **plain: float | int) -> tuple[str, int]:
    """One request with plain inputs over HTTP: (text, generated tokens)."""
    types = {"max_tokens": ("INT32", np.int32), "temperature": ("FP32", np.float32)}
    inputs = [httpclient.InferInput("text_input", [1, 1], "BYTES"),
              httpclient.InferInput("exclude_input_in_output", [1, 1], "BOOL"),
              httpclient.InferInput("return_num_output_tokens", [1, 1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[True]]))
    inputs[2].set_data_from_numpy(np.array([[True]]))
    for name, value in plain.items():
        tensor = httpclient.InferInput(name, [1, 1], types[name][0])
        tensor.set_data_from_numpy(np.array([[value]], dtype=types[name][1]))
        inputs.append(tensor)
    result = client.infer("llm", inputs)
    return result.as_numpy("text_output").reshape(-1)[0].decode(), int(result.as_numpy("num_output_tokens").sum())


def test_ready_and_smoke(tiny_server: Launch) -> None:
    text = "\n".join(tiny_server.output)
    assert "ready in" in text and "answer:" in text and "tokens/s" in text
    with httpclient.InferenceServerClient(tiny_server.http) as client:
        assert client.is_server_ready() and client.is_model_ready("llm")


def test_generate_over_http_and_grpc_agree(tiny_server: Launch) -> None:
    with httpclient.InferenceServerClient(tiny_server.http) as client:
        text, tokens = infer(client, PROMPT, max_tokens=12, temperature=0.0)
    assert 0 < tokens <= 12 and text
    answer = query.ask(tiny_server.grpc, "grpc", "llm", PROMPT, query.Options(max_tokens=12))
    assert (answer.text, answer.tokens) == (text, tokens)  # greedy: the same answer either way


def test_generate_endpoint_takes_plain_json(tiny_server: Launch) -> None:
    body = json.dumps({"text_input": PROMPT, "max_tokens": 5, "temperature": 0}).encode()
    request = urllib.request.Request(f"http://{tiny_server.http}/v2/models/llm/generate", data=body)
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())
    assert reply["model_name"] == "llm" and reply["text_output"].startswith(PROMPT)  # vLLM: input included


def test_llm_query_cli_prints_json(tiny_server: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    assert query.run(["--url", tiny_server.http, "-i", "http", "--max-tokens", "4", "--json", PROMPT]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["prompt"] == PROMPT and 0 < reply["tokens"] <= 4 and reply["tokens_per_s"] > 0


def test_concurrent_requests_are_batched(tiny_server: Launch) -> None:
    with httpclient.InferenceServerClient(tiny_server.http) as client:
        alone, _ = infer(client, PROMPT, max_tokens=8, temperature=0.0)
        before = client.get_inference_statistics("llm")["model_stats"][0]["execution_count"]
    prompts = [PROMPT if i % 2 else f"Tell me about item {i} please" for i in range(8)]
    answers: list[tuple[str, int] | None] = [None] * len(prompts)

    def ask(index: int) -> None:
        with httpclient.InferenceServerClient(tiny_server.http) as client:
            answers[index] = infer(client, prompts[index], max_tokens=4 + index, temperature=0.0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with httpclient.InferenceServerClient(tiny_server.http) as client:
        stats = client.get_inference_statistics("llm")["model_stats"][0]
    assert all(answer is not None and 0 < answer[1] <= 4 + i for i, answer in enumerate(answers))
    assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1
    assert stats["execution_count"] - before < len(prompts)  # fewer executions than requests
    same_prompt = [answer for i, answer in enumerate(answers) if i % 2 and answer and answer[1] == 4 + i]
    assert all(text.startswith(alone[:len(text)]) or alone.startswith(text) for text, _ in same_prompt)


def test_bad_request_is_answered_with_an_error(tiny_server: Launch) -> None:
    client = grpcclient.InferenceServerClient(tiny_server.grpc)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
    sampling = grpcclient.InferInput("sampling_parameters", [1, 1], "BYTES")
    sampling.set_data_from_numpy(np.array([[b'{"beam_width": 4}']], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="beam_width"):
        client.infer("llm", [text, sampling])
    client.close()


def test_sigint_stops_the_server_cleanly(tiny_server: Launch) -> None:
    code, output = interrupt(tiny_server)
    assert code == 0, output
    assert "SIGINT: tritonserver stopped" in output
    assert_stopped_cleanly(tiny_server)
