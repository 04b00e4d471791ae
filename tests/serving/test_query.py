"""``llm-query``'s mapping of one prompt onto each request interface (``launcher.interfaces``; no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from launcher import interfaces, query
from launcher.errors import LauncherError
from tests.fixtures.tiny_models import CHAT_TEMPLATE


def served(*inputs: tuple[str, str], outputs: tuple[str, ...] = ("text_output",), decoupled: bool = False,
           batch: int = 0, parameters: dict[str, str] | None = None) -> interfaces.ServedModel:
    """A model config in the JSON form Triton reports it (gRPC ``as_json``, unwrapped)."""
    config = {"max_batch_size": batch, "input": [{"name": n, "data_type": t, "dims": ["1"]} for n, t in inputs],
              "output": [{"name": name} for name in outputs], "model_transaction_policy": {"decoupled": decoupled},
              "parameters": {key: {"string_value": value} for key, value in (parameters or {}).items()}}
    return interfaces.ServedModel.from_config("llm", config)


TEXT = ("text_input", "TYPE_STRING")
VLLM_INPUTS = [TEXT, ("stream", "TYPE_BOOL"), ("sampling_parameters", "TYPE_STRING"),
               ("exclude_input_in_output", "TYPE_BOOL"), ("return_finish_reason", "TYPE_BOOL"),
               ("return_num_input_tokens", "TYPE_BOOL"), ("return_num_output_tokens", "TYPE_BOOL")]
VLLM_OUTPUTS = ("text_output", "finish_reason", "cumulative_logprob", "num_input_tokens", "num_output_tokens")
OPTIONS = query.Options(max_tokens=7, temperature=0.5, top_k=3, stream=True, sampling={"stop": ["\n"]})


def test_vllm_interface_gets_json_sampling_parameters_and_the_usage_flags() -> None:
    model = served(*VLLM_INPUTS, outputs=VLLM_OUTPUTS, decoupled=True, parameters={"tokenizer_dir": "/tok"})
    assert model.kind == interfaces.VLLM and model.tokenizer_dir == "/tok"
    values = model.values("hi", OPTIONS)
    assert json.loads(values.pop("sampling_parameters")) == {"max_tokens": 7, "temperature": 0.5, "top_k": 3,
                                                             "stop": ["\n"]}
    assert values == {"text_input": "hi", "stream": True, "exclude_input_in_output": True,
                      "return_finish_reason": True, "return_num_input_tokens": True,
                      "return_num_output_tokens": True}
    assert model.inputs["text_input"] == ("TYPE_STRING", [1])  # max_batch_size 0: no batch dimension
    assert model.outputs == ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens")
    (tensor,) = model.tensors(grpcclient, {"text_input": "hi"})
    assert (tensor.name(), tensor.datatype(), tensor.shape()) == ("text_input", "BYTES", [1])


def test_llmapi_interface_gets_sampling_param_inputs() -> None:
    model = served(TEXT, ("streaming", "TYPE_BOOL"), ("sampling_param_max_tokens", "TYPE_INT32"),
                   ("sampling_param_temperature", "TYPE_FP32"))
    assert model.kind == interfaces.LLMAPI
    assert model.values("hi", OPTIONS) == {"text_input": "hi", "streaming": False,  # not decoupled: no stream
                                           "sampling_param_max_tokens": 7, "sampling_param_temperature": 0.5}


def test_trtllm_ensemble_gets_plain_inputs_with_a_batch_dimension() -> None:
    model = served(TEXT, ("max_tokens", "TYPE_INT32"), ("temperature", "TYPE_FP32"), ("top_p", "TYPE_FP32"),
                   batch=8)
    assert model.kind == interfaces.ENSEMBLE and model.inputs["max_tokens"] == ("TYPE_INT32", [1, 1])
    assert model.values("hi", OPTIONS) == {"text_input": "hi", "max_tokens": 7, "temperature": 0.5}


def test_a_model_without_text_input_is_refused() -> None:
    with pytest.raises(LauncherError, match="--model: 'llm' takes no text_input"):
        served(("input_ids", "TYPE_INT32"))


def test_responses_add_up_to_the_answer() -> None:
    """Streamed pieces in the vLLM backend's layout: text deltas, per-response token counts, "None" until
    the last finish reason; and the same fields from the HTTP generate extension."""
    completion = interfaces.Completion()
    for text, reason, count in (("Par", "None", 1), ("is", "None", 1), (".", "stop", 2)):
        completion.add(interfaces.Piece(text, reason, 9, count))
    assert completion == interfaces.Completion("Paris.", "stop", 9, 4)
    piece = interfaces.read_generate_json({"text_output": "Paris", "finish_reason": "length",
                                           "num_input_tokens": 9, "num_output_tokens": [3]})
    assert piece == interfaces.Piece("Paris", "length", 9, 3)


def test_read_result_takes_scalar_and_vector_counts() -> None:
    """A real tritonclient ``InferResult`` in the vLLM backend's layout: num_input_tokens comes as a 0-d
    array, num_output_tokens as ``[n]``."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    response = service_pb2.ModelInferResponse(model_name="llm", id="1")
    arrays = {"text_output": np.array([b"Paris"], dtype=np.object_), "finish_reason": np.array([b"stop"],
                                                                                              dtype=np.object_),
              "num_input_tokens": np.asarray(9, dtype=np.uint32), "num_output_tokens": np.asarray([2], np.uint32)}
    for name, array in arrays.items():
        output = response.outputs.add(name=name, shape=list(array.shape))
        output.datatype = "BYTES" if array.dtype == np.object_ else "UINT32"
        raw = serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()
        response.raw_output_contents.append(raw)
    assert interfaces.read_result(grpcclient.InferResult(response)) == interfaces.Piece("Paris", "stop", 9, 2)


def test_read_result_takes_http_results() -> None:
    """tritonclient's HTTP ``InferResult`` (JSON, no raw protobuf outputs) reads to the same piece."""
    import tritonclient.http as httpclient

    body = {"model_name": "llm", "outputs": [
        {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": ["Paris"]},
        {"name": "finish_reason", "datatype": "BYTES", "shape": [1], "data": ["stop"]},
        {"name": "num_input_tokens", "datatype": "UINT32", "shape": [], "data": [9]},
        {"name": "num_output_tokens", "datatype": "UINT32", "shape": [1], "data": [2]}]}
    result = httpclient.InferResult.from_response_body(json.dumps(body).encode())
    assert interfaces.read_result(result) == interfaces.Piece("Paris", "stop", 9, 2)


def test_chat_prompt_uses_the_tokenizer_template(tiny_hf: Path) -> None:
    assert interfaces.chat_prompt(tiny_hf, "hi") == "<|user|>\nhi</s>\n<|assistant|>\n"
    assert "{{ m['content'] }}" in CHAT_TEMPLATE  # the fixture's template, rendered above


def test_a_missing_tokenizer_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match=r"--tokenizer: .* is not a directory"):
        query.prompt_for("127.0.0.1:9", "grpc", "llm", "hi", str(tmp_path / "nothing"))


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(LauncherError, match=r"--url: no Triton server answers grpc at 127\.0\.0\.1:9"):
        query.run(["--url", "127.0.0.1:9", "--raw", "hello"])


def test_the_llmapi_models_streamed_text_is_read_as_deltas_over_http_too() -> None:
    """The llmapi model streams the whole text so far (its generate_stream events too); llm-query prints each
    piece once."""
    llmapi = served(TEXT, ("streaming", "TYPE_BOOL"), ("sampling_param_max_tokens", "TYPE_INT32"), decoupled=True)
    reader = interfaces.Reader(llmapi)
    events = [{"text_output": text} for text in ("Pa", "Paris", "Paris.")]
    completion = interfaces.Completion()
    for event in events:
        completion.add(reader.read_json(event))
    assert completion.text == "Paris."
    vllm = interfaces.Reader(served(*VLLM_INPUTS, outputs=VLLM_OUTPUTS, decoupled=True))
    assert [vllm.read_json({"text_output": text}).text for text in ("Pa", "ris")] == ["Pa", "ris"]

