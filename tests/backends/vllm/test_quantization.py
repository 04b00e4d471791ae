"""vLLM quantized precisions render only loadable combinations: fp8 / int8_sq / int4_awq x a checkpoint
already quantized that way or not. The pre-quantized checkpoints' config files below are ours, written as
the real tools write them: ModelOpt's ``hf_quant_config.json`` (``{"producer": {"name": "modelopt"},
"quantization": {"quant_algo": ..., "kv_cache_quant_algo": ...}}``, Model-Optimizer
``modelopt/torch/export/unified_export_hf.py``), AutoAWQ's ``quantization_config`` in config.json
(``quant_method: awq``, ``bits: 4``, ``group_size: 128``, ``zero_point: true``, ``version: gemm``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from tests.conftest import write_hf_config

MODELOPT_FP8 = {"producer": {"name": "modelopt", "version": "0.46.0"},
                "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}
AUTOAWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def checkpoint(tmp_path: Path, kind: str) -> Path:
    if kind == "awq":
        return write_hf_config(tmp_path / "awq", torch_dtype="float16", quantization_config=AUTOAWQ)
    hf = write_hf_config(tmp_path / kind, torch_dtype="bfloat16")
    if kind == "modelopt-fp8":
        (hf / "hf_quant_config.json").write_text(json.dumps(MODELOPT_FP8))
    return hf


def model_json(run_deploy, tmp_path: Path, *overrides: str) -> dict:
    run_deploy("model=tiny-llama", "backend=vllm", "target=docker", *overrides, "action=render")
    return json.loads((tmp_path / "out/model_repository/llm/1/model.json").read_text())


@pytest.mark.parametrize(("precision", "kind", "expected"), [
    ("fp8", "plain", {"quantization": "fp8", "kv_cache_dtype": "fp8"}),  # vLLM quantizes at load
    ("fp8", "modelopt-fp8", {"kv_cache_dtype": "fp8"}),  # the config's method (modelopt) is left alone
    ("auto", "modelopt-fp8", {"kv_cache_dtype": "fp8"}),  # FP8 KV from the checkpoint's scales
    ("int4_awq", "awq", {}),  # no explicit method: vLLM chooses awq_marlin
    ("auto", "awq", {}),
])
def test_loadable_combinations(run_deploy, tmp_path: Path, precision: str, kind: str, expected: dict) -> None:
    hf = checkpoint(tmp_path, kind)
    args = model_json(run_deploy, tmp_path, f"model.checkpoint={hf}", "hardware=h100x1", f"precision={precision}")
    assert {k: args[k] for k in ("quantization", "kv_cache_dtype") if k in args} == expected
    if kind != "plain":
        assert args["model"] == str(hf)  # served in place: converting would drop the quantization


def test_awq_below_ampere_runs_fp16(run_deploy, tmp_path: Path) -> None:
    hf = checkpoint(tmp_path, "awq")
    turing = model_json(run_deploy, tmp_path, f"model.checkpoint={hf}", "hardware=a100x1",
                        "hardware.compute_capability=7.5", "precision=auto")
    assert turing["dtype"] == "float16"  # vLLM falls back to the awq kernel, which takes fp16 only


@pytest.mark.parametrize(("precision", "kind", "message"), [
    ("int4_awq", "plain", "precision: precision=int4_awq needs a checkpoint already quantized with AWQ"),
    ("int8_sq", "plain", "precision: precision=int8_sq needs a checkpoint already quantized with W8A8"),
    ("int4_awq", "modelopt-fp8", "precision: the checkpoint is already quantized (FP8)"),
    ("fp8", "awq", "precision: the checkpoint is already quantized (W4A16_AWQ)"),
    ("bf16", "modelopt-fp8", "precision: the checkpoint is already quantized (FP8)"),
])
def test_unloadable_combinations_are_refused(run_deploy, tmp_path: Path, precision: str, kind: str,
                                             message: str) -> None:
    hf = checkpoint(tmp_path, kind)
    with pytest.raises(LauncherError) as caught:
        run_deploy("model=tiny-llama", f"model.checkpoint={hf}", "backend=vllm", "hardware=h100x1",
                   f"precision={precision}", "action=plan")
    assert message in str(caught.value) and len(caught.value.problems) == 1
