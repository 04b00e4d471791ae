"""Each validation rule, positive and negative, from a table; and the CLI's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import pipeline, validate
from launcher.deployment import Deployment, resolve
from launcher.spec import to_spec
from launcher.targets.local import hardware_present
from tests.conftest import compose_spec, run_cli, write_hf_config


def deployment(*overrides: str) -> Deployment:
    return resolve(to_spec(compose_spec(list(overrides))), tuple(overrides))


GPU_8B = ("model=llama3-8b", "action=plan")

CASES = [
    # rule, overrides, expected substring of the first problem (None: no problem)
    (validate.precision_fits_hardware, (*GPU_8B, "precision=fp8", "hardware=a100x1", "backend=vllm"),
     "fp8 needs compute capability >= 8.9"),
    (validate.precision_fits_hardware, (*GPU_8B, "precision=fp8", "hardware=h100x1", "backend=vllm"), None),
    (validate.precision_fits_hardware, (*GPU_8B, "precision=fp8", "hardware=l40sx4", "backend=vllm"), None),
    (validate.precision_fits_hardware, (*GPU_8B, "precision=int4_awq", "hardware=cpu"), "needs a GPU"),
    (validate.parallelism_fits_gpus, (*GPU_8B, "backend=trtllm", "backend.tensor_parallel=8",
                                      "hardware=h100x1"), "= 8 GPUs, but hardware=h100x1 has 1"),
    (validate.parallelism_fits_gpus, (*GPU_8B, "backend=trtllm", "backend.tensor_parallel=8",
                                      "hardware=h100x8"), None),
    (validate.parallelism_fits_gpus, (*GPU_8B, "backend=trtllm", "backend.tensor_parallel=8",
                                      "backend.pipeline_parallel=2", "hardware=h100x8n2"), None),
    (validate.heads_divide_by_tp, (*GPU_8B, "backend=vllm", "backend.tensor_parallel=3", "hardware=h100x8"),
     "32 attention heads do not divide by tensor_parallel=3"),
    (validate.heads_divide_by_tp, (*GPU_8B, "backend=vllm", "backend.tensor_parallel=8", "hardware=h100x8"),
     None),
    (validate.heads_divide_by_tp, ("model=smollm2-135m", "action=plan", "backend=vllm",
                                   "backend.tensor_parallel=2", "hardware=h100x2"),
     "9 attention heads do not divide by tensor_parallel=2"),
    (validate.pipeline_divides_layers, (*GPU_8B, "backend=trtllm", "backend.pipeline_parallel=64",
                                        "hardware=h100x8n2"), "64 stages for 32 layers"),
    (validate.pipeline_divides_layers, (*GPU_8B, "backend=trtllm", "backend.pipeline_parallel=2",
                                        "hardware=h100x2"), None),
    (validate.sequence_fits_model, (*GPU_8B, "model.max_input_len=8000", "hardware=h100x1"),
     "exceeds the model's 8192 positions"),
    (validate.sequence_fits_model, (*GPU_8B, "hardware=h100x1"), None),
    (validate.memory_fits, ("model=llama3-70b", "action=plan", "backend=vllm", "hardware=h100x1",
                            "precision=bf16"), "GiB weights"),
    (validate.memory_fits, ("model=llama3-70b", "action=plan", "backend=vllm", "hardware=h100x8",
                            "backend.tensor_parallel=8", "precision=bf16"), None),
    (validate.positive_sizes, (*GPU_8B, "backend.max_batch_size=0", "hardware=h100x1"),
     "backend.max_batch_size: must be >= 1"),
    (validate.positive_sizes, (*GPU_8B, "backend.kv_cache_memory_fraction=1.5", "hardware=h100x1"),
     "must be in (0, 1]"),
    (validate.positive_sizes, (*GPU_8B, "hardware=h100x1"), None),
    (validate.architecture_known, ("model=tiny-llama", "action=plan"), "model.arch: unknown"),
    (validate.architecture_known, (*GPU_8B,), None),
    (validate.checkpoint_available, ("model=llama3-8b", "action=export", "hardware=h100x1"),
     "model.checkpoint: '/models/Meta-Llama-3-8B-Instruct' does not exist; action=export needs the weights"),
    (validate.checkpoint_available, ("model=llama3-8b", "action=render", "hardware=h100x1"), None),
    (hardware_present, ("model=llama3-8b", "action=smoke", "hardware=h100x1",
                        "model.checkpoint=/nonexistent"), "this machine has"),
    (hardware_present, ("model=llama3-8b", "action=render", "hardware=h100x1"), None),
]


@pytest.mark.parametrize(("rule", "overrides", "expected"), CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_rule(rule: validate.Rule, overrides: tuple[str, ...], expected: str | None) -> None:
    found = rule(deployment(*overrides))
    if expected is None:
        assert found == []
    else:
        assert found, f"{rule.__name__} found nothing for {overrides}"
        assert expected in str(found[0])


BACKEND_CASES = [
    (("model=llama3-8b", "action=plan", "backend=pytorch", "backend.tensor_parallel=2", "hardware=h100x2"),
     "backend.tensor_parallel: the pytorch backend does not split a model"),
    (("model=llama3-8b", "action=plan", "backend=pytorch", "hardware=h100x1"), None),
    (("model=llama3-8b", "action=plan", "backend=pytorch", "hardware=h100x8n2"),
     "hardware: the pytorch backend serves from one tritonserver on one node; hardware=h100x8n2 has 2 nodes"),
    (("model=llama3-8b", "action=plan", "backend=trtllm", "hardware=cpu", "precision=bf16"),
     "hardware: TensorRT-LLM needs an NVIDIA GPU"),
    (("model=llama3-8b", "action=plan", "backend=trtllm", "hardware=h100x1"), None),
    (("model=llama3-8b", "action=plan", "backend=pytorch", "precision=fp8", "hardware=h100x1"),
     "precision: the pytorch backend serves 16/32-bit weights"),
]


@pytest.mark.parametrize(("overrides", "expected"), BACKEND_CASES)
def test_backend_rules(overrides: tuple[str, ...], expected: str | None) -> None:
    found = pipeline.problems(deployment(*overrides))
    if expected is None:
        assert found == []
    else:
        assert any(expected in str(p) for p in found), found


def test_architecture_mismatch_names_the_difference(tmp_path: Path) -> None:
    ckpt = write_hf_config(tmp_path / "ckpt", num_hidden_layers=3)
    found = validate.architecture_matches_checkpoint(deployment(
        "model=llama3-8b", f"model.checkpoint={ckpt}", "action=plan", "hardware=h100x1"))
    assert len(found) == 1
    assert "num_layers: config 32 vs checkpoint 3" in str(found[0])


def test_architecture_from_local_checkpoint_matches(tmp_path: Path) -> None:
    ckpt = write_hf_config(tmp_path / "ckpt")
    dep = deployment("model=tiny-llama", f"model.checkpoint={ckpt}", "action=plan")
    assert dep.arch is not None and dep.arch.num_layers == 2
    assert validate.problems(dep) == []


BAD_INPUT = [
    (("model=llama3-8b", "precision=fp8", "hardware=a100x1", "backend=vllm", "action=render"),
     "precision: fp8 needs compute capability >= 8.9"),
    (("model=llama3-8b", "backend=trtllm", "backend.tensor_parallel=8", "hardware=h100x1", "action=render"),
     "backend.tensor_parallel: tensor_parallel x pipeline_parallel = 8 GPUs"),
    (("model=llama3-8b", "backend=vllm", "backend.tensor_parallel=3", "hardware=h100x8", "action=render"),
     "backend.tensor_parallel: 32 attention heads do not divide by tensor_parallel=3"),
    (("model=llama3-8b", "backend=pytorch", "backend.tensor_parallel=2", "hardware=h100x2", "action=render"),
     "backend.tensor_parallel: the pytorch backend does not split"),
    (("model=llama3-8b", "hardware=h100x1", "action=export"), "model.checkpoint: '/models/Meta-Llama-3-8B"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUT)
def test_cli_reports_one_line_exit_2_and_writes_nothing(
        tmp_path: Path, overrides: tuple[str, ...], expected: str) -> None:
    result = run_cli(*overrides, f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(expected in line for line in lines), result.stderr
    assert all(line.startswith("error ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    result = run_cli("model=llama3-8b", "backend=pytorch", "backend.tensor_parallel=2", "precision=fp8",
                     "hardware=a100x1", "action=plan", cwd=tmp_path)
    assert result.returncode == 2
    assert "precision: fp8" in result.stderr
    assert "backend.tensor_parallel" in result.stderr


@pytest.mark.parametrize(("override", "expected"), [
    ("backend=vlm", "Could not find 'backend/vlm'"),
    ("backend.max_batch_size=many", "backend.max_batch_size"),
    ("backend.max_batchsize=8", "max_batchsize"),
])
def test_hydra_compose_errors_stay_compact(tmp_path: Path, override: str, expected: str) -> None:
    result = run_cli(override, "action=plan", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
