"""One deployment on two GPUs (``hardware=h100x2``) for every backend: the plan's GPU placement, the
rendered repository and the launch command agree on world size, ranks and GPU ids.

Rendered here (no GPU); the pytorch backend was also served this way on two H100s
(bench/gpu/serve_multi_gpu.py), TensorRT-LLM and vLLM with tensor_parallel_size=2 were not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.fixtures.tiny_models import write_hf
from tests.repository import docker_gpus, docker_server_command, model_config, mpirun_segments, parameters

TWO_GPUS = ("hardware=h100x2", "precision=bf16", "target=docker")


@pytest.mark.parametrize("per_gpu", [1, 2])
def test_pytorch_runs_instance_count_instances_on_each_gpu(run_deploy, per_gpu: int) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=pytorch", f"backend.instance_count={per_gpu}", *TWO_GPUS,
                         "action=render")
    out = Path(outcome.output_dir)
    config = model_config(out / "model_repository/llm/config.pbtxt")
    assert {group.kind for group in config.instance_group} == {config.instance_group[0].KIND_GPU}
    # Triton starts ``count`` instances on every GPU its group lists
    instances = [gpu for group in config.instance_group for gpu in group.gpus for _ in range(group.count)]
    assert instances == [where.gpu for where in outcome.placement] == [0] * per_gpu + [1] * per_gpu
    assert parameters(config)["device"] == "cuda"
    assert docker_gpus(out) == [0, 1]


def test_vllm_tensor_parallel_2(run_deploy) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=vllm", "backend.tensor_parallel=2", *TWO_GPUS, "action=render")
    out = Path(outcome.output_dir)
    engine = json.loads((out / "model_repository/llm/1/model.json").read_text())
    assert engine["tensor_parallel_size"] * engine["pipeline_parallel_size"] == len(outcome.placement) == 2
    # one vLLM engine whose workers take the GPUs, not one Triton instance per GPU
    groups = model_config(out / "model_repository/llm/config.pbtxt").instance_group
    assert [(group.kind, group.count) for group in groups] == [(groups[0].KIND_MODEL, 1)]
    assert [where.gpu for where in outcome.placement] == docker_gpus(out) == [0, 1]


def test_trtllm_engine_tensor_parallel_2(run_deploy, tmp_path: Path) -> None:
    spec = ("model=tiny-llama", f"model.checkpoint={write_hf(tmp_path / 'hf')}", "model.max_input_len=128",
            "backend=trtllm", "backend.runtime=engine", "backend.tensor_parallel=2", *TWO_GPUS)
    run_deploy(*spec, "action=export")  # the real conversion into two rank files
    outcome = run_deploy(*spec, "action=render")
    checkpoint = Path(outcome.export_dir) / "checkpoint"
    mapping = json.loads((checkpoint / "config.json").read_text())["mapping"]
    assert (mapping["world_size"], mapping["tp_size"], mapping["pp_size"]) == (2, 2, 1)
    assert sorted(p.name for p in checkpoint.glob("rank*.safetensors")) == ["rank0.safetensors", "rank1.safetensors"]
    build = next(step for step in outcome.steps if step.kind == "build").command
    assert f"--checkpoint_dir={checkpoint}" in build
    assert "--workers=2" in build and "--gpus_per_node=2" in build
    out = Path(outcome.output_dir)
    ranks = mpirun_segments(docker_server_command(out))
    assert len(ranks) == mapping["world_size"]
    for rank, segment in enumerate(ranks):
        assert f"--backend-config=python,shm-region-prefix-name=prefix{rank}_" in segment
        assert ("--load-model=tensorrt_llm" in segment) == (rank > 0)
    # TensorRT-LLM runs rank r on GPU r % gpus_per_node (the build's --gpus_per_node)
    assert [rank % 2 for rank in range(len(ranks))] == [where.gpu for where in outcome.placement] == docker_gpus(out)
    engine = parameters(model_config(out / "model_repository/tensorrt_llm/config.pbtxt"))
    assert engine["num_nodes"] == "1"
    assert engine.get("gpu_device_ids", "") == ""  # every GPU the container sees, in rank order


def test_trtllm_llmapi_tensor_parallel_2(run_deploy) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=trtllm", "backend.tensor_parallel=2", *TWO_GPUS,
                         "action=render")
    out = Path(outcome.output_dir)
    model_yaml = yaml.safe_load((out / "model_repository/llm/1/model.yaml").read_text())
    assert (model_yaml["tensor_parallel_size"], model_yaml["pipeline_parallel_size"]) == (2, 1)
    assert model_yaml["gpus_per_node"] == 2
    ranks = mpirun_segments(docker_server_command(out))
    assert [segment[:4] for segment in ranks] == [["-n", "1", "trtllm-llmapi-launch", "tritonserver"]] * 2
    assert [where.gpu for where in outcome.placement] == docker_gpus(out) == [0, 1]


@pytest.mark.parametrize("backend", ["vllm", "trtllm"])
def test_plan_prints_where_every_rank_runs(backend: str, tmp_path: Path) -> None:
    result = run_cli("model=llama3-70b", f"backend={backend}", "backend.tensor_parallel=8",
                     "backend.pipeline_parallel=2", "hardware=h100x8n2", "target=slurm", "action=plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GPUs (16 workers on h100x8n2: 2 x 8 H100-SXM5-80GB)" in result.stdout
    assert "node 0 GPU 0: rank 0 (tp 0, pp 0)" in result.stdout
    assert "node 1 GPU 7: rank 15 (tp 7, pp 1)" in result.stdout
