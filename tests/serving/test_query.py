"""``llm-query`` maps one prompt onto each backend's request interface (no server needed)."""

from __future__ import annotations

import json

import pytest

from launcher import query
from launcher.errors import LauncherError


def interface(*inputs: tuple[str, str], decoupled: bool = False, batch: int = 0) -> query.ModelInterface:
    config = {"max_batch_size": batch, "input": [{"name": n, "data_type": t, "dims": ["1"]} for n, t in inputs],
              "output": [{"name": "text_output"}], "model_transaction_policy": {"decoupled": decoupled}}
    return query.ModelInterface.from_config("llm", config)


TEXT = ("text_input", "TYPE_STRING")
OPTIONS = query.Options(max_tokens=7, temperature=0.5, top_k=3, stream=True)


def test_vllm_style_gets_json_sampling_parameters() -> None:
    model = interface(TEXT, ("stream", "TYPE_BOOL"), ("sampling_parameters", "TYPE_STRING"),
                      ("exclude_input_in_output", "TYPE_BOOL"), ("max_tokens", "TYPE_INT32"), decoupled=True,
                      batch=8)
    values = model.values("hi", OPTIONS)
    assert json.loads(values.pop("sampling_parameters")) == {"max_tokens": 7, "temperature": 0.5, "top_k": 3}
    assert values == {"text_input": "hi", "stream": True, "exclude_input_in_output": True}
    assert model.inputs["text_input"] == ("TYPE_STRING", [1, 1])  # batch dimension added


def test_llmapi_style_gets_sampling_param_inputs() -> None:
    model = interface(TEXT, ("streaming", "TYPE_BOOL"), ("sampling_param_max_tokens", "TYPE_INT32"),
                      ("sampling_param_temperature", "TYPE_FP32"))
    assert model.values("hi", OPTIONS) == {"text_input": "hi", "streaming": False,  # not decoupled: no stream
                                           "sampling_param_max_tokens": 7, "sampling_param_temperature": 0.5}


def test_trtllm_ensemble_style_gets_plain_inputs() -> None:
    model = interface(TEXT, ("max_tokens", "TYPE_INT32"), ("temperature", "TYPE_FP32"), ("top_p", "TYPE_FP32"))
    assert model.values("hi", OPTIONS) == {"text_input": "hi", "max_tokens": 7, "temperature": 0.5}


def test_a_model_without_text_input_is_refused() -> None:
    with pytest.raises(LauncherError, match="--model: 'llm' takes no text_input"):
        interface(("input_ids", "TYPE_INT32")).values("hi", OPTIONS)


def test_no_server_is_a_clear_error() -> None:
    with pytest.raises(LauncherError, match=r"--url: no Triton server answers grpc at 127\.0\.0\.1:9"):
        query.run(["--url", "127.0.0.1:9", "hello"])
