"""What the vllm backend renders: NVIDIA's vLLM-container layout, engine arguments vLLM accepts."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from launcher.backends.vllm import BACKEND, CPU_KV_CACHE_BYTES
from launcher.pipeline import Outcome
from tests.fixtures.tiny_models import write_hf
from tests.vllm.conftest import TINY


def rendered(out: Path, model: str) -> tuple[dict, dict]:
    text = (out / "model_repository" / model / "config.pbtxt").read_text()
    config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()))
    return config, json.loads((out / "model_repository" / model / "1" / "model.json").read_text())


def test_cpu_repository(run_deploy: Callable[..., Outcome], tmp_path: Path) -> None:
    hf = write_hf(tmp_path / "hf")
    outcome = run_deploy("backend=vllm", *TINY, f"model.checkpoint={hf}", "action=render")
    config, engine = rendered(Path(outcome.output_dir), "tiny")
    assert config["backend"] == "vllm"
    assert config["modelTransactionPolicy"] == {"decoupled": True}  # the official backend requires it
    assert config["instanceGroup"] == [{"count": 1, "kind": "KIND_MODEL"}]
    # what NVIDIA's vllm_backend declares in auto_complete_config (src/model.py)
    assert {i["name"] for i in config["input"]} == {
        "text_input", "image", "stream", "sampling_parameters", "exclude_input_in_output", "return_finish_reason",
        "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens", "return_num_output_tokens",
        "embedding_request"}
    assert [(o["name"], o["dataType"], o["dims"]) for o in config["output"]] == [
        ("text_output", "TYPE_STRING", ["-1"]), ("finish_reason", "TYPE_STRING", ["-1"]),
        ("cumulative_logprob", "TYPE_FP32", ["-1"]), ("logprobs", "TYPE_STRING", ["-1"]),
        ("num_input_tokens", "TYPE_UINT32", ["1"]), ("num_output_tokens", "TYPE_UINT32", ["-1"])]
    assert all(i.get("optional") for i in config["input"] if i["name"] != "text_input")
    assert config["parameters"]["tokenizer_dir"] == {"stringValue": str(hf)}  # for llm-query's chat template
    assert engine["model"] == str(hf)  # float32 HF checkpoint: used in place
    assert engine["dtype"] == "float32"
    assert engine["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert engine["enforce_eager"] is True
    assert engine["max_model_len"] == 256
    from vllm.engine.arg_utils import AsyncEngineArgs

    assert set(engine) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def test_gpu_repository_needs_no_weights(run_deploy: Callable[..., Outcome]) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=vllm", "hardware=h100x8", "precision=fp8",
                         "backend.tensor_parallel=8", "action=render")
    _, engine = rendered(Path(outcome.output_dir), "llm")
    assert engine["quantization"] == "fp8"
    assert engine["kv_cache_dtype"] == "fp8"
    assert engine["dtype"] == "bfloat16"
    assert engine["tensor_parallel_size"] == 8
    assert engine["enforce_eager"] is False
    assert engine["gpu_memory_utilization"] == 0.9
    assert "kv_cache_memory_bytes" not in engine


def test_backend_files_exist() -> None:
    files = BACKEND.backend_files(None)  # type: ignore[arg-type]  # the files do not depend on the spec
    assert list(files) == ["vllm/model.py"]
    assert all(path.is_file() for path in files.values())
