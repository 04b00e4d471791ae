"""TensorRT-LLM rules: .qnemo only with the engine runtime (and its own split), container tag, quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from launcher.errors import LauncherError
from tests.fixtures.tiny_models import write_qnemo

TINY = ("model=tiny-llama", "model.max_input_len=128", "hardware=h100x1")


@pytest.fixture(scope="module")
def qnemo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qnemo(tmp_path_factory.mktemp("qnemo") / "tiny.qnemo")


def problems(run_deploy, *overrides: str) -> str:
    with pytest.raises(LauncherError) as caught:
        run_deploy(*overrides)
    return str(caught.value)


@pytest.mark.parametrize(("backend", "key"), [
    ("backend=vllm", "model.checkpoint"), ("backend=pytorch", "model.checkpoint"),
    ("backend=trtllm", "backend.runtime")], ids=["vllm", "pytorch", "llmapi"])
def test_qnemo_refused_outside_the_engine_runtime(run_deploy, qnemo: Path, backend: str, key: str) -> None:
    message = problems(run_deploy, *TINY, f"model.checkpoint={qnemo}", backend, "precision=auto", "action=render")
    assert f"{key}: " in message and ".qnemo" in message and "backend.runtime=engine" in message


def test_qnemo_served_by_the_engine_runtime(run_deploy, qnemo: Path, tmp_path: Path) -> None:
    outcome = run_deploy(*TINY, f"model.checkpoint={qnemo}", "backend=trtllm", "backend.runtime=engine",
                         "precision=auto", "action=export")
    checkpoint = Path(outcome.export_dir) / "checkpoint"
    assert {"config.json", "rank0.safetensors", "tokenizer_config.json"} <= {p.name for p in checkpoint.iterdir()}
    assert "qkv" in " ".join(load_file(checkpoint / "rank0.safetensors"))  # copied as it is: TensorRT-LLM names
    steps = run_deploy(*TINY, f"model.checkpoint={qnemo}", "backend=trtllm", "backend.runtime=engine",
                       "precision=auto", "action=plan").steps
    export, build = steps[0], steps[1]
    assert export.done and "[cached]" in export.description  # a re-run neither copies nor rebuilds
    assert build.command[1] == f"--checkpoint_dir={checkpoint}" and "--use_fp8_context_fmha=enable" in build.command


def test_qnemo_split_is_fixed_by_the_file(run_deploy, qnemo: Path) -> None:
    message = problems(run_deploy, *TINY, "hardware=h100x2", f"model.checkpoint={qnemo}",
                       "backend=trtllm", "backend.runtime=engine", "backend.tensor_parallel=2", "action=plan")
    assert "backend.tensor_parallel: the .qnemo was saved for tensor_parallel=1; the spec asks for 2" in message


def test_qnemo_quantization_must_match_the_precision(run_deploy, qnemo: Path) -> None:
    message = problems(run_deploy, *TINY, f"model.checkpoint={qnemo}", "backend=trtllm", "backend.runtime=engine",
                       "precision=int4_awq", "action=plan")
    assert "precision: precision=int4_awq (W4A16_AWQ) but the checkpoint is quantized with FP8" in message


def test_fp8_below_ada_is_refused(run_deploy) -> None:
    message = problems(run_deploy, "model=llama3-8b", "hardware=a100x1", "backend=trtllm", "precision=fp8",
                       "action=plan")
    assert "precision: fp8 needs compute capability >= 8.9" in message


@pytest.mark.parametrize(("overrides", "expected"), [
    (("hardware=h100x1", "backend.tensor_parallel=2"), "backend.tensor_parallel: tensor_parallel x pipeline_parallel"),
    (("hardware=h100x8", "backend.tensor_parallel=8", "model=llama3-8b"), None),
    (("hardware=h100x8", "backend.tensor_parallel=8", "model=mistral-7b"), None),
    (("hardware=h100x1", "backend.max_batch_size=4096"), "backend.max_batch_size: needs ~"),
    (("hardware=h100x1", "backend.runtime=engine", "backend.max_num_tokens=1024"), "backend.max_num_tokens: 1024"),
    (("hardware=h100x1", "+backend.engine_parameters.no_such_knob=1"), "backend.engine_parameters.no_such_knob"),
], ids=["world-size", "kv-heads-repeat", "kv-heads-8", "kv-cache-estimate", "max-num-tokens", "unknown-parameter"])
def test_trtllm_rules(run_deploy, overrides: tuple[str, ...], expected: str | None) -> None:
    base = ("model=llama3-8b", "backend=trtllm", "precision=bf16", *overrides, "action=plan")
    if expected is None:
        run_deploy(*base)
    else:
        assert expected in problems(run_deploy, *base)


@pytest.mark.parametrize(("precision", "problem"), [
    ("fp8", None), ("auto", None), ("bf16", "precision: the checkpoint is already quantized (FP8)"),
    ("int4_awq", "precision: precision=int4_awq (W4A16_AWQ) but the checkpoint is quantized with FP8")])
def test_llmapi_uses_a_modelopt_checkpoint_as_it_is(run_deploy, tmp_path: Path, precision: str,
                                                    problem: str | None) -> None:
    from tests.conftest import write_hf_config

    hf = write_hf_config(tmp_path / "fp8-hf")
    (hf / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}')
    overrides = ("model=tiny-llama", f"model.checkpoint={hf}", "hardware=h100x1", "backend=trtllm",
                 f"precision={precision}", "action=plan")
    if problem:
        assert problem in problems(run_deploy, *overrides)
        return
    steps = run_deploy(*overrides).steps
    assert [s.kind for s in steps][:1] == ["export"] and "quantize" not in [s.kind for s in steps]
    assert steps[0].done and str(hf) in steps[0].description  # served in place, no calibration
