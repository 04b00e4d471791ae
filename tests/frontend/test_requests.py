"""The front end without a model: requests validated and mapped onto each interface, answers written in
OpenAI's shape, the app's limits and errors (its Triton address answers nothing), the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient

from launcher import interfaces
from launcher.errors import LauncherError
from launcher.frontend import cli, protocol
from launcher.frontend.app import Settings, create_app
from launcher.server import free_ports
from tests.conftest import REPO

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"messages": CHAT["messages"]}, 400, "model"),
    ({**CHAT, "messages": []}, 400, "messages"),
    ({**CHAT, "temperature": 2.5}, 400, "temperature"),
    ({**CHAT, "top_p": 0}, 400, "top_p"),
    ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({**CHAT, "presence_penalty": -3}, 400, "presence_penalty"),
    ({**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),  # without logprobs=true
    ({**CHAT, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs"),
    ({**CHAT, "n": 3}, 400, "n"),
    ({**CHAT, "stop": ["", "x"]}, 400, "stop"),
    ({**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),  # without stream
    ({**CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ({**CHAT, "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ({**CHAT, "temprature": 0.5}, 400, "temprature"),
    ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "messages.0.content.0.type"),
    ({**CHAT, "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ({**CHAT, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
], ids=["no-model", "no-messages", "temperature", "top-p", "max-tokens", "penalty", "top-logprobs-alone",
        "top-logprobs-range", "n", "empty-stop", "stream-options-alone", "tools", "logit-bias", "unknown-field",
        "tool-role", "image", "schema-missing", "format-type"])
def test_chat_refusals_name_the_field(body: dict, status: int, param: str) -> None:
    with pytest.raises(protocol.APIError) as err:
        protocol.parse(protocol.ChatRequest, body)
    assert (err.value.status, err.value.param) == (status, param)
    assert err.value.message.startswith(param)


def test_harmless_fields_and_their_defaults_are_accepted() -> None:
    ask = protocol.parse(protocol.ChatRequest, {**CHAT, "user": "u", "metadata": {"a": "b"}, "store": False,
                                                "tool_choice": "none", "n": 1, "logit_bias": {}, "stream": None})
    assert (ask.stream, ask.fields, ask.sampling) == (False, {}, {})


def test_chat_request_maps_onto_options_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    ask = protocol.parse(protocol.ChatRequest, {
        "model": "m", "messages": [{"role": "developer", "content": "Be brief."},
                                   {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                                {"type": "text", "text": "there"}]}],
        "max_tokens": 9, "max_completion_tokens": 7, "temperature": 0.5, "seed": 3, "stop": "END",
        "logprobs": True, "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
        "ignore_eos": True, "top_k": 4})
    assert ask.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert (ask.max_tokens, ask.logprobs, ask.stream, ask.include_usage) == (7, 2, True, True)
    assert ask.fields == {"temperature": 0.5, "top_k": 4, "seed": 3, "stop": ("END",),
                          "structured": {"json": schema}}
    assert ask.sampling == {"ignore_eos": True}
    json_object = protocol.parse(protocol.ChatRequest, {**CHAT, "response_format": {"type": "json_object"}})
    assert json_object.fields == {"structured": {"json_object": True}}


def test_completion_request() -> None:
    ask = protocol.parse(protocol.CompletionRequest, {"model": "m", "prompt": ["Paris is"], "logprobs": 0})
    assert (ask.prompt, ask.messages, ask.logprobs, ask.max_tokens) == ("Paris is", None, 0, None)
    for body, param in (({"model": "m", "prompt": ["a", "b"]}, "prompt"), ({"model": "m", "prompt": [1, 2]},
                                                                         "prompt.0"),
                        ({"model": "m", "prompt": "a", "echo": True}, "echo"),
                        ({"model": "m", "prompt": "a", "best_of": 2}, "best_of"),
                        ({"model": "m", "prompt": "a", "suffix": "z"}, "suffix")):
        with pytest.raises(protocol.APIError) as err:
            protocol.parse(protocol.CompletionRequest, body)
        assert err.value.param == param


# --------------------------------------------------------------------------- the interfaces' mapping
TYPES = {"text_input": "TYPE_STRING", "sampling_parameters": "TYPE_STRING", "stop_words": "TYPE_STRING",
         "sampling_param_stop": "TYPE_STRING", "guided_decoding_guide_type": "TYPE_STRING",
         "guided_decoding_guide": "TYPE_STRING", "max_tokens": "TYPE_INT32", "sampling_param_max_tokens": "TYPE_INT32",
         "random_seed": "TYPE_UINT64", "sampling_param_seed": "TYPE_UINT64", "sampling_param_temperature": "TYPE_FP32"}
DECLARED = {"vllm": ["text_input", "stream", "sampling_parameters", "exclude_input_in_output", "return_logprobs"],
            "llmapi": ["text_input", "streaming", "sampling_param_max_tokens", "sampling_param_stop",
                       "sampling_param_seed", "sampling_param_temperature"],
            "ensemble": ["text_input", "max_tokens", "stop_words", "random_seed", "stream"]}


def served(kind: str, *inputs: str, outputs: tuple[str, ...] = ("text_output",),
           batch: int = 0) -> interfaces.ServedModel:
    """A decoupled model of ``kind``'s usual inputs (and ``inputs``), in the JSON form Triton reports."""
    config = {"max_batch_size": batch, "model_transaction_policy": {"decoupled": True},
              "input": [{"name": name, "data_type": TYPES.get(name, "TYPE_BOOL"),
                         "dims": ["-1"] if "stop" in name else ["1"]} for name in [*DECLARED[kind], *inputs]],
              "output": [{"name": name} for name in outputs]}
    return interfaces.ServedModel.from_config("llm", config)


OPTIONS = interfaces.Options(max_tokens=5, temperature=None, stop=("END", "\n\n"), seed=3)


def test_vllm_interface_carries_every_field_in_its_json() -> None:
    model = served("vllm", outputs=("text_output", "logprobs"))
    options = interfaces.Options(**{**OPTIONS.__dict__, "logprobs": 2, "structured": {"json": {"type": "object"}},
                                    "sampling": {"ignore_eos": True}})
    assert model.refused(options) == []
    values = model.values("hi", options)
    assert json.loads(values["sampling_parameters"]) == {
        "max_tokens": 5, "stop": ["END", "\n\n"], "seed": 3, "logprobs": 2, "ignore_eos": True,
        "structured_outputs": json.dumps({"json": {"type": "object"}})}
    assert values["return_logprobs"] is True
    assert "return_logprobs" not in model.values("hi", OPTIONS)  # asked for only with logprobs
    assert served("vllm").refused(options) == ["logprobs"]  # a model without the logprobs output


def test_llmapi_interface_refuses_what_it_has_no_input_for() -> None:
    model = served("llmapi")
    assert model.refused(OPTIONS) == []
    assert model.values("hi", OPTIONS) == {"text_input": "hi", "streaming": False, "sampling_param_max_tokens": 5,
                                           "sampling_param_stop": ["END", "\n\n"], "sampling_param_seed": 3}
    refused = interfaces.Options(structured={"json_object": True}, logprobs=0, presence_penalty=1.0,
                                 sampling={"ignore_eos": True})
    assert model.refused(refused) == ["presence_penalty", "logprobs", "structured", "ignore_eos"]


def test_ensemble_interface_gets_stop_words_and_guided_decoding() -> None:
    model = served("ensemble", "guided_decoding_guide_type", "guided_decoding_guide", batch=4)
    schema = {"type": "object"}
    options = interfaces.Options(**{**OPTIONS.__dict__, "structured": {"json": schema}})
    assert model.refused(options) == []
    values = model.values("hi", options)
    assert values == {"text_input": "hi", "max_tokens": 5, "stop_words": ["END", "\n\n"], "random_seed": 3,
                      "stream": False, "guided_decoding_guide_type": "json_schema",
                      "guided_decoding_guide": json.dumps(schema)}
    tensors = {tensor.name(): tensor for tensor in model.tensors(grpcclient, values)}
    assert tensors["stop_words"].shape() == [1, 2] and tensors["random_seed"].datatype() == "UINT64"
    assert served("ensemble").refused(options) == ["structured"]  # no guided decoding inputs declared


def test_the_llmapi_models_cumulative_text_is_read_as_deltas() -> None:
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    def result(text: str) -> Any:
        response = service_pb2.ModelInferResponse(model_name="llm", id="1")
        response.outputs.add(name="text_output", shape=[1], datatype="BYTES")
        response.raw_output_contents.append(serialize_byte_tensor(np.array([text.encode()], np.object_)).item())
        return grpcclient.InferResult(response)

    llmapi, vllm = interfaces.Reader(served("llmapi")), interfaces.Reader(served("vllm"))
    assert [llmapi.read(result(text)).text for text in ("Pa", "Paris", "Paris.")] == ["Pa", "ris", "."]
    assert [vllm.read(result(text)).text for text in ("Pa", "ris")] == ["Pa", "ris"]


# ---------------------------------------------------------------------------------------- answers
def test_stop_strings_are_found_across_pieces() -> None:
    stops = protocol.StopText(("END", "\n\n"))
    assert [stops.feed(text) for text in ("Paris E", "N", "D and more")] == ["Paris ", "", ""]
    assert stops.hit
    held = protocol.StopText(("END",))
    assert [held.feed(text) for text in ("Paris E", "ast")] == ["Paris ", "East"]
    assert (held.feed("ern E"), held.flush()) == ("ern ", "E")


@pytest.mark.parametrize(("reason", "tokens", "expected"), [
    ("stop", 3, "stop"), ("length", 9, "length"), (None, 9, "length"), (None, 3, "stop"), (None, None, "stop"),
    ("cancelled", 3, "stop")])
def test_finish_reason(reason: str | None, tokens: int | None, expected: str) -> None:
    assert protocol.finish_reason(reason, tokens, 9) == expected


POSITIONS = [{"5": {"logprob": -0.5, "rank": 2, "decoded_token": " Par"},  # sampled, not the likeliest
              "7": {"logprob": -0.1, "rank": 1, "decoded_token": " Lyon"},
              "9": {"logprob": -2.0, "rank": 3, "decoded_token": " X"}},
             {"6": {"logprob": -0.2, "rank": 1, "decoded_token": "is"}}]


def test_logprobs_in_openais_shapes() -> None:
    chat = protocol.ChatAnswer("m", 2).logprobs(POSITIONS)
    assert chat is not None
    first = chat["content"][0]
    assert (first["token"], first["logprob"], first["bytes"]) == (" Par", -0.5, list(b" Par"))
    assert [(top["token"], top["logprob"]) for top in first["top_logprobs"]] == [(" Lyon", -0.1), (" Par", -0.5)]
    text = protocol.TextAnswer("m", 1)
    assert text.logprobs(POSITIONS) == {"tokens": [" Par", "is"], "token_logprobs": [-0.5, -0.2],
                                        "top_logprobs": [{" Lyon": -0.1}, {"is": -0.2}], "text_offset": [0, 4]}
    assert text.logprobs(POSITIONS[1:])["text_offset"] == [6]  # offsets go on across chunks
    assert protocol.ChatAnswer("m", None).logprobs(POSITIONS) is None


def test_usage_comes_from_the_models_counts_only() -> None:
    assert protocol.usage(9, 4) == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    assert protocol.usage(None, 4) is None


# ---------------------------------------------------------------------- the app, without a model
@pytest.fixture(scope="module")
def app() -> Any:
    from transformers import AutoTokenizer  # noqa: F401  (here first: the app imports it on a thread)

    (port,) = free_ports("127.0.0.1", 1)  # nothing listens there: the model is never ready
    settings = Settings(triton=f"127.0.0.1:{port}", model="llm", served_name="smol", aliases=("alias",),
                        api_key="k", max_body_bytes=1000, cors_origins=("http://ui.example",))
    with TestClient(create_app(settings), headers={"Authorization": "Bearer k"}) as client:
        yield client


def test_models_are_listed_before_the_model_is_ready(app: TestClient) -> None:
    assert [model["id"] for model in app.get("/v1/models").json()["data"]] == ["smol", "alias"]
    assert app.get("/v1/models/alias").json()["root"] == "llm"
    assert app.get("/health/ready").status_code == 503
    reply = app.post("/v1/chat/completions", json={**CHAT, "model": "alias"})
    assert reply.status_code == 503 and "not ready" in reply.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("get", "/v1/models", {"headers": {"Authorization": "Bearer nope"}}, 401, "invalid_api_key"),
    ("get", "/v1/models", {"headers": {"Authorization": ""}}, 401, "invalid_api_key"),
    ("post", "/v1/completions", {"content": b"{" + b" " * 1000 + b"}"}, 413, "request_too_large"),
    ("post", "/v1/completions", {"content": iter([b"{", b" " * 1000, b"}"])}, 413, "request_too_large"),  # chunked
    ("post", "/v1/completions", {"content": b"{not json"}, 400, None),
    ("post", "/v1/chat/completions", {"json": CHAT}, 404, "model_not_found"),
    ("get", "/v1/models/gpt-4o", {}, 404, "model_not_found"),
    ("get", "/v1/nothing", {}, 404, None),
    ("get", "/v1/completions", {}, 405, None),
], ids=["wrong-key", "no-key", "large-body", "large-chunked-body", "bad-json", "unknown-model", "unknown-card",
        "no-route", "wrong-method"])
def test_errors_in_openais_shape(app: TestClient, method: str, path: str, kwargs: dict, status: int,
                                 code: str | None) -> None:
    reply = getattr(app, method)(path, **kwargs)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_health_and_metrics_need_no_key_and_cors_is_for_the_origin_given(app: TestClient) -> None:
    assert app.get("/metrics", headers={"Authorization": ""}).text.count("openai_requests_total") >= 1
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    assert app.options("/v1/chat/completions", headers=preflight).headers["access-control-allow-origin"] == \
        "http://ui.example"
    other = app.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# ------------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize(("argv", "key"), [
    (["--model", "llm"], cli.PROG),
    (["--triton", "localhost", "--model", "llm"], "--triton"),
    (["--triton", "h:1", "--model", "llm", "--port", "70000"], "--port"),
    (["--triton", "h:1", "--model", "llm", "--max-tokens", "0"], "--max-tokens"),
    (["--triton", "h:1", "--model", "llm", "--max-tokens", "64", "--max-model-len", "64"], "--max-tokens"),
    (["--triton", "h:1", "--model", "llm", "--request-timeout-s", "0"], "--request-timeout-s"),
    (["--triton", "h:1", "--model", "llm", "--tokenizer", "/no/such/dir"], "--tokenizer"),
    (["--triton", "h:1", "--model", "llm", "--chat-template", "/no/such/file"], "--chat-template"),
    (["--triton", "h:1", "--model", "llm", "--api-key-env", "LLM_LAUNCH_TEST_UNSET_KEY"], "--api-key-env"),
    (["--triton", "h:1", "--model", "llm", "--log-level", "loud"], cli.PROG),
], ids=["no-triton", "triton-address", "port", "max-tokens", "no-room", "timeout", "tokenizer", "template",
        "api-key", "log-level"])
def test_bad_flags_name_themselves(argv: list[str], key: str) -> None:
    with pytest.raises(LauncherError) as err:
        cli.run(argv)
    assert err.value.problems[0].key == key


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "launcher.frontend", "--triton", "nowhere", "--model", "llm"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == ["error --triton: 'nowhere' is not HOST:PORT (pass the Triton server's gRPC "
                                        "address, e.g. 127.0.0.1:8001)"]


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(LauncherError) as err:
            cli.run(["--triton", "h:1", "--model", "llm", "--port", str(port)])
    assert err.value.problems[0].key == "--port" and "cannot listen" in err.value.problems[0].message


def test_a_chat_template_of_its_own_wins_over_the_tokenizers(tmp_path: Path) -> None:
    from tests.fixtures.tiny_models import write_hf

    directory = write_hf(tmp_path / "hf")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert interfaces.chat_prompt(directory, chat) == "<|system|>\nBe brief.</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}> "
    assert interfaces.chat_prompt(directory, chat, template) == "[system] Be brief.\n[user] hi\n> "


def test_flag_tensors_are_built_once_and_prompts_each_time() -> None:
    model = served("vllm", "return_finish_reason", outputs=("text_output", "finish_reason"))
    options = interfaces.Options(max_tokens=5, stream=True)
    first, second = (model.tensors(grpcclient, model.values(prompt, options)) for prompt in ("a", "b"))
    assert [tensor.name() for tensor in first] == ["text_input", "sampling_parameters", "stream",
                                                   "exclude_input_in_output", "return_finish_reason"]
    shared = [one is two for one, two in zip(first, second, strict=True)]
    assert shared == [False, False, True, True, True]
    assert first[0]._get_content() != second[0]._get_content()


def test_prompt_tokens_are_counted_as_transformers_counts_them(tmp_path: Path) -> None:
    """The tokenizer's own encoder, special tokens included; a tokenizer file that truncates is asked through
    transformers (which turns truncation off), so a long prompt is never undercounted."""
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_models import tiny_tokenizer

    texts = ["hi", "The capital of France is Paris. " * 40, "<s> ünïcödé\n\n  spaced  "]
    plain, truncating = tmp_path / "plain", tmp_path / "truncating"
    tiny_tokenizer().save_pretrained(plain)
    tiny_tokenizer().save_pretrained(truncating)
    file = json.loads((truncating / "tokenizer.json").read_text())
    file["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    (truncating / "tokenizer.json").write_text(json.dumps(file))
    reference = AutoTokenizer.from_pretrained(plain)
    for directory in (plain, truncating):
        counts = [interfaces.count_tokens(str(directory), text) for text in texts]
        assert counts == [len(reference(text)["input_ids"]) for text in texts]
    assert counts[1] > 40
