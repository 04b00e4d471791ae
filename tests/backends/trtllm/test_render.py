"""Both TensorRT-LLM runtimes rendered for one GPU, TP=2 and 2 nodes x 8 GPUs: configs parse with Triton's
schema, no placeholder is left, values follow the spec, and the launch line has one segment per rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from launcher.backends.trtllm.engine import ENGINE_DEFAULTS
from launcher.render import environment
from tests.repository import docker_server_command, model_config, mpirun_segments, parameters

# fill_template.py's output on tensorrtllm_backend v0.19.0's inflight_batcher_llm templates (field lists and the
# fill used, written by scripts/engine_reference.py from the fetched repository; source commit inside).
REFERENCE = json.loads((Path(__file__).parent / "upstream" / "inflight_batcher_llm-v0.19.0.json").read_text())
HARDWARE = {  # id -> (overrides, tensor parallel, pipeline parallel)
    "tp1": (("model=llama3-8b", "hardware=h100x1"), 1, 1),
    "tp2": (("model=llama3-8b", "hardware=h100x2", "backend.tensor_parallel=2"), 2, 1),
    "h100x8n2": (("model=llama3-70b", "hardware=h100x8n2", "backend.tensor_parallel=8",
                  "backend.pipeline_parallel=2"), 8, 2),
}


def render(run_deploy, runtime: str, hardware: str, *extra: str) -> Path:
    overrides, _, _ = HARDWARE[hardware]
    outcome = run_deploy(*overrides, "backend=trtllm", f"backend.runtime={runtime}", "precision=bf16",
                         "target=docker", "backend.max_batch_size=16", "backend.kv_cache_memory_fraction=0.8",
                         *extra, "action=render")
    return Path(outcome.output_dir)


@pytest.mark.parametrize("hardware", list(HARDWARE))
@pytest.mark.parametrize("runtime", ["llmapi", "engine"])
def test_repository_parses_and_leaves_no_placeholder(run_deploy, runtime: str, hardware: str) -> None:
    out = render(run_deploy, runtime, hardware, "backend.bls=true")
    repository = out / "model_repository"
    configs = sorted(repository.glob("*/config.pbtxt"))
    expected = {"llm"} if runtime == "llmapi" else {"llm", "preprocessing", "tensorrt_llm", "postprocessing",
                                                    "tensorrt_llm_bls"}
    assert {p.parent.name for p in configs} == expected
    for path in configs:
        assert model_config(path).name == path.parent.name
    for path in out.rglob("*"):
        if path.is_file():
            assert "${" not in path.read_text(), path


@pytest.mark.parametrize("hardware", list(HARDWARE))
def test_llmapi_model_yaml_and_launch(run_deploy, hardware: str) -> None:
    _, tp, pp = HARDWARE[hardware]
    out = render(run_deploy, "llmapi", hardware, "backend.streaming=true")
    config = model_config(out / "model_repository/llm/config.pbtxt")
    assert config.backend == "python" and config.model_transaction_policy.decoupled is True
    assert {i.name for i in config.input} >= {"text_input", "streaming", "sampling_param_max_tokens",
                                               "sampling_param_temperature", "sampling_param_top_p"}
    assert {o.name for o in config.output} >= {"text_output", "finish_reason"}
    assert (out / "model_repository/llm/1/model.py").is_file()
    model_yaml = yaml.safe_load((out / "model_repository/llm/1/model.yaml").read_text())
    assert model_yaml["model"].startswith("/models/Meta-Llama-3-")
    assert model_yaml["backend"] == "pytorch"
    assert (model_yaml["tensor_parallel_size"], model_yaml["pipeline_parallel_size"]) == (tp, pp)
    assert model_yaml["triton_config"] == {"max_batch_size": 0, "decoupled": True, "cancellation_check_period_ms": 100}
    assert model_yaml["max_batch_size"] == 16
    assert model_yaml["kv_cache_config"]["free_gpu_memory_fraction"] == 0.8
    command = docker_server_command(out)
    if tp * pp == 1:
        assert command[0] == "tritonserver" and ":" not in command
        return
    ranks = mpirun_segments(command)
    assert len(ranks) == tp * pp
    for rank, segment in enumerate(ranks):
        assert segment[:4] == ["-n", "1", "trtllm-llmapi-launch", "tritonserver"]
        assert f"--backend-config=python,shm-region-prefix-name=prefix{rank}_" in segment
        assert ("--load-model=llm" in segment) == (rank > 0)


@pytest.mark.parametrize("hardware", list(HARDWARE))
def test_engine_parameters_and_mpirun(run_deploy, hardware: str) -> None:
    _, tp, pp = HARDWARE[hardware]
    out = render(run_deploy, "engine", hardware, "backend.streaming=true",
                 "backend.batch_scheduler_policy=max_utilization",
                 "+backend.engine_parameters.decoding_mode=top_k_top_p")
    repository = out / "model_repository"
    llm = model_config(repository / "tensorrt_llm/config.pbtxt")
    params = parameters(llm)
    cache = out.parent / "cache"
    assert llm.backend == "tensorrtllm" and llm.max_batch_size == 16
    assert llm.model_transaction_policy.decoupled is True
    assert list(llm.dynamic_batching.preferred_batch_size) == [16]
    assert Path(params["gpt_model_path"]).parent.parent.parent == cache
    assert Path(params["gpt_model_path"]).parent.name == "engines"
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.8"
    assert params["decoding_mode"] == "top_k_top_p"
    assert params["num_nodes"] == str(-(-tp * pp // 8))
    tokenizer_dir = params["tokenizer_dir"]
    engine_entry = Path(params["gpt_model_path"]).parents[1]
    assert Path(tokenizer_dir) == engine_entry / "checkpoint"
    for name in ("preprocessing", "postprocessing"):
        assert parameters(model_config(repository / name / "config.pbtxt"))["tokenizer_dir"] == tokenizer_dir
    ensemble = model_config(repository / "llm/config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["preprocessing", "tensorrt_llm",
                                                                         "postprocessing"]
    command = docker_server_command(out)
    if tp * pp == 1:  # launch_triton_server.py --no-mpi: one plain server
        assert command[0] == "tritonserver" and ":" not in command
        return
    ranks = mpirun_segments(command)
    assert len(ranks) == tp * pp
    for rank, segment in enumerate(ranks):
        assert segment[:3] == ["-n", "1", "tritonserver"]
        assert "--disable-auto-complete-config" in segment
        assert f"--backend-config=python,shm-region-prefix-name=prefix{rank}_" in segment
        explicit = ["--model-control-mode=explicit", "--load-model=tensorrt_llm"]
        assert all(flag in segment for flag in explicit) == (rank > 0)
        assert any(flag in segment for flag in explicit) == (rank > 0)


@pytest.mark.parametrize("model", list(REFERENCE["models"]))
def test_engine_configs_equal_fill_template_output_on_v0_19_0(model: str) -> None:
    """Our template filled with the reference's values parses to the same ModelConfig as upstream's
    template filled by fill_template.py: inputs, outputs, dtypes, dims, optional flags, parameters, steps."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = environment().get_template(f"trtllm/engine/{model}/config.pbtxt.j2").render(name=model, **REFERENCE["fill"])
    ours = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                     preserving_proto_field_name=True)
    assert ours == REFERENCE["models"][model]


def test_every_reference_placeholder_gets_a_value() -> None:
    from launcher.backends import get_backend
    from launcher.deployment import resolve
    from launcher.pipeline import typed_spec
    from tests.conftest import compose_spec

    spec = typed_spec(compose_spec(["model=llama3-8b", "backend=trtllm", "backend.runtime=engine",
                                    "hardware=h100x1", "action=plan"]))
    plan = get_backend("trtllm").plan(resolve(spec))
    values = plan.models[0].context
    assert set().union(*REFERENCE["placeholders"].values()) <= set(values)
    assert set(values) <= set(REFERENCE["fill"]) | {"model_yaml"}  # nothing the v0.19.0 templates lack
    assert values["triton_backend"] == "tensorrtllm" and ENGINE_DEFAULTS["max_queue_size"] == values["max_queue_size"]


def test_build_command_and_engine_cache_key(run_deploy) -> None:
    plan = run_deploy("model=llama3-8b", "backend=trtllm", "backend.runtime=engine", "hardware=h100x1",
                      "precision=bf16", "backend.max_batch_size=4", "action=plan").steps
    build = next(s for s in plan if s.kind == "build")
    flags = dict(arg.split("=", 1) for arg in build.command[1:])
    assert build.command[0] == "trtllm-build" and build.where == "GPU host"
    assert flags["--max_batch_size"] == "4" and flags["--max_input_len"] == "4096"
    assert flags["--max_seq_len"] == "5120" and flags["--max_num_tokens"] == "8192"
    assert flags["--gemm_plugin"] == "auto" and "--use_fp8_context_fmha" not in flags
    assert flags["--output_dir"].startswith(flags["--checkpoint_dir"].removesuffix("checkpoint") + "engines/")
    same = run_deploy("model=llama3-8b", "backend=trtllm", "backend.runtime=engine", "hardware=h100x1",
                      "precision=bf16", "backend.max_batch_size=4", "action=plan").steps
    other = run_deploy("model=llama3-8b", "backend=trtllm", "backend.runtime=engine", "hardware=h100x1",
                       "precision=bf16", "backend.max_batch_size=8", "action=plan").steps
    assert next(s for s in same if s.kind == "build").command == build.command
    assert next(s for s in other if s.kind == "build").command != build.command


def test_fp8_engine_build_and_quantize_step(run_deploy) -> None:
    steps = run_deploy("model=llama3-8b", "backend=trtllm", "backend.runtime=engine", "hardware=h100x1",
                       "precision=fp8", "action=plan").steps
    build = next(s for s in steps if s.kind == "build")
    assert "--use_fp8_context_fmha=enable" in build.command
    quantize = next(s for s in steps if s.kind == "quantize")
    assert quantize.where == "GPU host" and "--qformat=fp8" in quantize.command
    assert "--kv_cache_dtype=fp8" in quantize.command


def test_llmapi_int4_awq_serves_the_modelopt_export(run_deploy) -> None:
    steps = run_deploy("model=llama3-8b", "backend=trtllm", "hardware=h100x1", "precision=int4_awq",
                       "action=plan").steps
    quantize = next(s for s in steps if s.kind == "quantize")
    assert quantize.command[:2] == ("python", "examples/hf_ptq/hf_ptq.py")  # Model-Optimizer 0.46
    assert quantize.where == "GPU host" and "needs a GPU" in quantize.description
    assert "--qformat=int4_awq" in quantize.command
    assert "--pyt_ckpt_path=/models/Meta-Llama-3-8B-Instruct" in quantize.command
    export_path = next(a.split("=", 1)[1] for a in quantize.command if a.startswith("--export_path="))
    out = Path(run_deploy("model=llama3-8b", "backend=trtllm", "hardware=h100x1", "precision=int4_awq",
                          "action=render").output_dir)
    model_yaml = yaml.safe_load((out / "model_repository/llm/1/model.yaml").read_text())
    assert model_yaml["model"] == export_path and Path(export_path).name.startswith("hf-modelopt-llama3-8b-")


def test_llmapi_on_slurm_is_one_srun_task_per_rank() -> None:
    from launcher.backends import get_backend
    from launcher.deployment import resolve
    from launcher.pipeline import typed_spec
    from launcher.targets import get_target
    from tests.conftest import compose_spec

    overrides, tp, pp = HARDWARE["h100x8n2"]
    spec = typed_spec(compose_spec([*overrides, "backend=trtllm", "target=slurm", "action=plan"]))
    dep, backend = resolve(spec), get_backend("trtllm")
    launch = get_target("slurm").launch(dep, backend.plan(dep), backend)
    assert len(launch.ranks) == tp * pp
    assert all(rank[0] == "trtllm-llmapi-launch" and Path(rank[1]).name == "tritonserver" for rank in launch.ranks)
    job = next(file for file in launch.files if file.path == "job.sbatch")
    assert job.context["command"][:2] == ["srun", f"--ntasks={tp * pp}"]
