"""A real tritonserver serving the rendered repository of a tiny random Llama (one server per module).

The tests share one ``llm-launch action=serve`` (with its OpenAI front end); the last one stops it with SIGINT, as
Ctrl-C does. The model speaks Triton's vLLM-backend contract (tests/contract checks it in full); these tests check
what users of llm-launch do with it: llm-query over gRPC, HTTP and the OpenAI API, the generate endpoint,
concurrent clients, and ``action=frontend`` in front of the running server.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from launcher import query
from launcher.errors import USER_ERROR_EXIT
from launcher.server import free_ports
from tests.conftest import REPO, run_cli
from tests.serving.conftest import Launch, assert_stopped_cleanly, interrupt, launch, wait_gone

pytestmark = pytest.mark.integration
PROMPT = "What is the capital of France?"
KEY_ENV, KEY = "LLM_LAUNCH_TEST_OPENAI_KEY", "tiny-key"


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


def test_openai_endpoint_is_printed_and_answers_as_triton_does(tiny_server: Launch) -> None:
    assert tiny_server.frontend_pid is not None
    url = tiny_server.openai_url
    line = next((line for line in tiny_server.output if line.startswith("openai ")), None) or \
        tiny_server.wait_for("openai ", timeout_s=10)  # printed right after "serving '..."
    assert line.startswith(f"openai {url} (model 'llm'); try: llm-query --openai --url 127.0.0.1:"), line
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    assert [model.id for model in client.models.list()] == ["llm"]
    reply = client.completions.create(model="llm", prompt=PROMPT, max_tokens=8, temperature=0)
    direct = query.ask(tiny_server.grpc, "grpc", "llm", PROMPT, query.Options(max_tokens=8))
    assert reply.choices[0].text == direct.text and reply.choices[0].finish_reason == direct.finish_reason
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == \
        (direct.input_tokens, direct.tokens)


def test_llm_query_openai_answers_as_over_grpc(tiny_server: Launch, capsys: pytest.CaptureFixture[str]) -> None:
    """The chat template applied by llm-query (gRPC) or by the front end (OpenAI): the same greedy answer."""
    answers = []
    for flags in (["--url", tiny_server.grpc], ["--openai", "--url", f"127.0.0.1:{tiny_server.openai_port}"]):
        assert query.run([*flags, "--max-tokens", "6", "--json", PROMPT]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    over_grpc, over_openai = answers
    assert over_openai["text"] and over_openai["text"] == over_grpc["text"]
    for key in ("num_input_tokens", "num_output_tokens", "finish_reason"):
        assert over_openai[key] == over_grpc[key], key
    assert query.run(["--openai", "--url", f"127.0.0.1:{tiny_server.openai_port}", "--raw", "--stream",
                      "--max-tokens", "5", PROMPT]) == 0  # a completion of the text as it is, streamed
    assert capsys.readouterr().out.strip()


def test_action_frontend_fronts_the_running_triton(tiny_server: Launch, tmp_path: Path) -> None:
    """``action=frontend``: the front end alone (with an API key and an alias) in front of the module's server;
    SIGTERM stops it, and only it."""
    run = launch("action=frontend", f"server.triton_url={tiny_server.grpc}", "server.openai_port=0",
                 "server.openai_aliases=[tiny]", f"server.openai_api_key_env={KEY_ENV}", f"output_dir={tmp_path}",
                 env={KEY_ENV: KEY})
    try:
        run.wait_for(f"serving 'llm' of the Triton at {tiny_server.grpc} until Ctrl-C", timeout_s=120)
        assert run.frontend_pid is not None and run.openai_url != tiny_server.openai_url
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=run.openai_url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=run.openai_url, api_key=KEY, max_retries=0, timeout=60)
        assert [model.id for model in client.models.list()] == ["llm", "tiny"]
        reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
        assert reply.choices[0].text == query.ask(tiny_server.grpc, "grpc", "llm", PROMPT,
                                                  query.Options(max_tokens=6)).text
        code, output = interrupt(run, signal.SIGTERM)
        assert code == 143, output
        assert "SIGTERM: the openai front end stopped" in output and "Traceback" not in output
        assert wait_gone(run.frontend_pid, 10) and (tmp_path / "openai.log").is_file()
        assert KEY not in (tmp_path / "openai.log").read_text()
    finally:
        run.kill()
    with grpcclient.InferenceServerClient(tiny_server.grpc) as client:
        assert client.is_server_ready()  # the Triton it fronted serves on


@pytest.mark.parametrize(("overrides", "expected"), [
    ((), r"^error server.triton_url: is not set; action=frontend starts the front end in front of a running "
         r"Triton \(e.g. server.triton_url=127.0.0.1:8001"),
    (("server.triton_url=localhost",), r"^error server.triton_url: 'localhost' is not HOST:GRPC_PORT"),
    (("server.triton_url=127.0.0.1:{free}",), r"^error server.triton_url: no Triton server answers gRPC at "
                                              r"127.0.0.1:\d+ \(start it"),
    (("server.triton_url={grpc}", "model.served_name=nope"),
     r"^error model.served_name: 'nope' is not a model of the Triton at 127.0.0.1:\d+ \(it has llm\)"),
], ids=["unset", "no-port", "nothing-there", "no-such-model"])
def test_action_frontend_without_its_triton_is_one_line(tiny_server: Launch, tmp_path: Path,
                                                        overrides: tuple[str, ...], expected: str) -> None:
    (free,) = free_ports("127.0.0.1", 1)
    filled = [o.format(grpc=tiny_server.grpc, free=free) for o in overrides]
    result = run_cli("action=frontend", "server.openai_port=0", f"output_dir={tmp_path / 'out'}", *filled, cwd=REPO)
    assert result.returncode == USER_ERROR_EXIT, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and re.match(expected, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_sigint_stops_the_server_cleanly(tiny_server: Launch) -> None:
    code, output = interrupt(tiny_server)
    assert code == 130, output  # 128 + SIGINT, at every stage
    assert "SIGINT: tritonserver and the openai front end stopped" in output
    assert "stopped by SIGINT during action=serve (while serving)" in output
    assert_stopped_cleanly(tiny_server)
