"""Both TensorRT-LLM runtimes rendered for one GPU, TP=2 and 2 nodes x 8 GPUs: configs parse with Triton's
schema, no placeholder is left, values follow the spec, and the launch line has one segment per rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jinja2 import meta

from launcher.backends.trtllm.engine import ENGINE_DEFAULTS
from launcher.render import TEMPLATES, environment
from tests.repository import docker_server_command, model_config, mpirun_segments, parameters

# Every placeholder of tensorrtllm_backend v0.19.0's inflight_batcher_llm templates (shared/formats.md C.2),
# plus prompt_embedding_table_data_type that newer copies add.
REFERENCE_PLACEHOLDERS = {
    "ensemble": {"triton_max_batch_size", "logits_datatype"},
    "preprocessing": {"triton_max_batch_size", "max_queue_delay_microseconds", "max_queue_size", "tokenizer_dir",
                      "add_special_tokens", "multimodal_model_path", "engine_dir", "max_num_images",
                      "preprocessing_instance_count"},
    "postprocessing": {"triton_max_batch_size", "tokenizer_dir", "skip_special_tokens",
                       "postprocessing_instance_count"},
    "tensorrt_llm": {
        "triton_backend", "triton_max_batch_size", "decoupled_mode", "max_queue_delay_microseconds",
        "max_queue_size", "encoder_input_features_data_type", "logits_datatype", "max_beam_width",
        "batching_strategy", "engine_dir", "encoder_engine_dir", "max_tokens_in_paged_kv_cache",
        "max_attention_window_size", "sink_token_length", "batch_scheduler_policy",
        "kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction", "kv_cache_host_memory_bytes",
        "kv_cache_onboard_blocks", "enable_trt_overlap", "exclude_input_in_output", "cancellation_check_period_ms",
        "stats_check_period_ms", "iter_stats_max_iterations", "request_stats_max_iterations",
        "enable_kv_cache_reuse", "normalize_log_probs", "enable_chunked_context", "gpu_device_ids",
        "participant_ids", "num_nodes", "lora_cache_optimal_adapter_size", "lora_cache_max_adapter_size",
        "lora_cache_gpu_memory_fraction", "lora_cache_host_memory_bytes", "lora_prefetch_dir", "decoding_mode",
        "lookahead_window_size", "lookahead_ngram_size", "lookahead_verification_set_size", "medusa_choices",
        "eagle_choices", "gpu_weights_percent", "enable_context_fmha_fp32_acc", "multi_block_mode",
        "cuda_graph_mode", "cuda_graph_cache_size", "speculative_decoding_fast_logits", "tokenizer_dir",
        "guided_decoding_backend", "xgrammar_tokenizer_info_path", "prompt_embedding_table_data_type"},
    "tensorrt_llm_bls": {"triton_max_batch_size", "decoupled_mode", "logits_datatype", "accumulate_tokens",
                         "tensorrt_llm_model_name", "tensorrt_llm_draft_model_name", "multimodal_encoders_name",
                         "bls_instance_count", "prompt_embedding_table_data_type"},
}
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


def test_engine_templates_use_every_reference_placeholder() -> None:
    env = environment()
    for model, placeholders in REFERENCE_PLACEHOLDERS.items():
        source = (TEMPLATES / "trtllm/engine" / model / "config.pbtxt.j2").read_text()
        used = meta.find_undeclared_variables(env.parse(source))
        assert placeholders <= used, (model, sorted(placeholders - used))


def test_every_reference_placeholder_gets_a_value(run_deploy) -> None:
    from launcher.backends import get_backend
    from launcher.deployment import resolve
    from launcher.pipeline import typed_spec
    from tests.conftest import compose_spec

    spec = typed_spec(compose_spec(["model=llama3-8b", "backend=trtllm", "backend.runtime=engine",
                                    "hardware=h100x1", "action=plan"]))
    plan = get_backend("trtllm").plan(resolve(spec))
    values = plan.models[0].context
    assert set().union(*REFERENCE_PLACEHOLDERS.values()) <= set(values)
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
    newer = run_deploy("model=llama3-8b", "backend=trtllm", "backend.runtime=engine", "hardware=h100x1",
                       "precision=bf16", "backend.max_batch_size=4", "backend.trtllm_version=0.19.0",
                       "action=plan").steps
    assert next(s for s in same if s.kind == "build").command == build.command
    assert next(s for s in newer if s.kind == "build").command != build.command


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
    assert quantize.command[:2] == ("python", "examples/llm_ptq/hf_ptq.py")
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
    assert job.context["command"].startswith(f"srun --ntasks={tp * pp} ")
