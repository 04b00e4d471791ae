"""A real tritonserver serving the rendered repository of a tiny random Llama (one server per module).

The tests share one ``llm-launch action=serve``; the last one stops it with SIGINT, as Ctrl-C does. The model
speaks Triton's vLLM-backend contract (tests/contract checks it in full); these tests check what users of
llm-launch do with it: llm-query over gRPC and HTTP, the generate endpoint, concurrent clients.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from launcher import query
from tests.serving.conftest import Launch, assert_stopped_cleanly, interrupt

pytestmark = pytest.mark.integration
PROMPT = "What is the capital of France?"


def generate(url: str, **fields: object) -> dict:
    """Triton's HTTP generate extension: inputs as JSON fields."""
    request = urllib.request.Request(f"http://{url}/v2/models/llm/generate", data=json.dumps(fields).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_ready_and_smoke(tiny_server: Launch) -> None:
    text = "\n".join(tiny_server.output)
    assert "ready in" in text and "answer:" in text and "tokens/s" in text
    with httpclient.InferenceServerClient(tiny_server.http) as client:
        assert client.is_server_ready() and client.is_model_ready("llm")


def test_llm_query_over_grpc_and_http_agree(tiny_server: Launch) -> None:
    options = query.Options(max_tokens=12)
    over_grpc = query.ask(tiny_server.grpc, "grpc", "llm", PROMPT, options)
    over_http = query.ask(tiny_server.http, "http", "llm", PROMPT, options)  # the generate endpoint
    streamed = query.ask(tiny_server.http, "http", "llm", PROMPT, query.Options(max_tokens=12, stream=True))
    def seen(answer: query.Answer) -> tuple:
        return answer.text, answer.tokens, answer.input_tokens, answer.finish_reason

    assert over_grpc.text and seen(over_grpc) == seen(over_http) == seen(streamed)  # greedy: the same answer
    assert over_grpc.finish_reason in ("stop", "length") and 0 < over_grpc.tokens <= 12


def test_generate_endpoint_takes_plain_json(tiny_server: Launch) -> None:
    reply = generate(tiny_server.http, text_input=PROMPT, max_tokens=5, temperature=0,
                     return_num_output_tokens=True)
    assert reply["model_name"] == "llm" and reply["text_output"].startswith(PROMPT)  # vLLM: input included
    assert reply["num_output_tokens"] <= 5


def test_llm_query_cli_prints_json(tiny_server: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    assert query.run(["--url", tiny_server.http, "-i", "http", "--max-tokens", "4", "--json", PROMPT]) == 0
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    assert reply["prompt"] == PROMPT and 0 < reply["num_output_tokens"] <= 4 and reply["tokens_per_s"] > 0
    assert reply["num_input_tokens"] > len(PROMPT.split()) and reply["finish_reason"] in ("stop", "length")
    assert "no chat template" not in captured.err  # the tiny tokenizer has one; the deployment names its dir


def test_an_empty_answer_is_an_error(tiny_server: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    first = query.ask(tiny_server.grpc, "grpc", "llm", PROMPT, query.Options(max_tokens=1)).text
    assert first
    code = query.run(["--url", tiny_server.grpc, "--raw", "--max-tokens", "8", "--stop", first[0], PROMPT])
    assert code == 1
    assert "returned an empty answer (finish_reason: stop)" in capsys.readouterr().err


def test_concurrent_requests_decode_together(tiny_server: Launch) -> None:
    """Eight streamed requests at once: every one gets its first token before any of them is done, as rows
    of one batch do (a queue of requests would finish the first before starting the last)."""
    client = grpcclient.InferenceServerClient(tiny_server.grpc)
    arrivals: queue.Queue[tuple[float, str, bool]] = queue.Queue()

    def callback(result: object, error: object) -> None:
        assert error is None, error
        response = result.get_response()
        arrivals.put((time.monotonic(), response.id, response.parameters["triton_final_response"].bool_param))

    client.start_stream(callback=callback)
    try:
        for i in range(8):
            tensors = []
            for name, value in {"text_input": f"Tell me about item {i}", "stream": True,
                                "sampling_parameters": json.dumps({"max_tokens": 60, "temperature": 0,
                                                                   "ignore_eos": True})}.items():
                tensor = grpcclient.InferInput(name, [1], "BOOL" if isinstance(value, bool) else "BYTES")
                tensor.set_data_from_numpy(np.array([value if isinstance(value, bool) else value.encode()],
                                                    dtype=bool if isinstance(value, bool) else np.object_))
                tensors.append(tensor)
            client.async_stream_infer("llm", tensors, request_id=str(i), enable_empty_final_response=True)
        events = [arrivals.get(timeout=60) for _ in range(8 * 60)]
    finally:
        client.stop_stream()
        client.close()
    first = {request_id: at for at, request_id, _ in reversed(events)}
    done = [at for at, _, final in events if final]
    assert len(first) == 8 and len(done) == 8 and max(first.values()) < min(done)


def test_bad_request_is_answered_with_an_error(tiny_server: Launch) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        generate(tiny_server.http, text_input="hi", sampling_parameters=json.dumps({"beam_width": 4}))
    assert "unknown key 'beam_width'" in err.value.read().decode()


def test_sigint_stops_the_server_cleanly(tiny_server: Launch) -> None:
    code, output = interrupt(tiny_server)
    assert code == 130, output  # 128 + SIGINT, at every stage
    assert "SIGINT: tritonserver stopped" in output
    assert "stopped by SIGINT during action=serve (while serving)" in output
    assert_stopped_cleanly(tiny_server)
