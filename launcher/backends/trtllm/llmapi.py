"""The llmapi runtime: one Python-backend model over ``tensorrt_llm.LLM`` serving an HF directory
(``1/model.yaml`` holds the LLM arguments); fp8/int4_awq come from a ModelOpt export planned here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.backends.base import export_hf, export_step, rank_placement, serving_dtype
from launcher.backends.trtllm.common import QFORMATS, hf_source, needs_quantization, quantization_problems
from launcher.backends.trtllm.common import server_ranks as rank_commands
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, Plan, ServerCommand, Step, TritonModel

MODELOPT_PTQ = "examples/llm_ptq/hf_ptq.py"  # in a NVIDIA/Model-Optimizer checkout
CANCELLATION_CHECK_PERIOD_MS = 100
LAUNCH = ("trtllm-llmapi-launch",)  # wraps each rank's server when there are several


def problems(dep: Deployment) -> list[Problem]:
    if dep.checkpoint_format == "qnemo":
        return [Problem("backend.runtime", "a .qnemo is a TensorRT-LLM checkpoint: only the engine runtime "
                        "builds it", "set backend.runtime=engine")]
    return quantization_problems(dep)


def plan(dep: Deployment) -> Plan:
    hf = hf_source(dep)
    steps = [export_step(dep, hf, "convert to a Hugging Face safetensors directory")]
    served = hf
    if needs_quantization(dep):
        served = modelopt_export(dep)
        steps.append(Step("quantize", f"ModelOpt {dep.spec.precision.name} calibration (needs a GPU) -> "
                          f"{served.directory} (skip when the checkpoint is already a ModelOpt HF export)",
                          modelopt_command(dep, hf.directory, served.directory), where="GPU host",
                          done=served.directory.is_dir()))
    model = TritonModel("trtllm/llmapi/tensorrt_llm", dep.spec.model.served_name,
                        {"model_yaml": model_yaml(dep, str(served.directory))})
    return Plan(served, steps, [model], placement=rank_placement(dep))


def modelopt_export(dep: Deployment) -> Export:
    precision = dep.spec.precision
    key = dep.cache_key("hf-modelopt", quant_algo=precision.quant_algo, kv_cache=precision.kv_cache)
    return Export("hf", dep.cache_root / key, key, serving_dtype(dep))


def modelopt_command(dep: Deployment, source: Path, output: Path) -> tuple[str, ...]:
    precision = dep.spec.precision
    return ("python", MODELOPT_PTQ, f"--pyt_ckpt_path={source}",
            f"--qformat={QFORMATS.get(str(precision.quant_algo), str(precision.quant_algo).lower())}",
            f"--kv_cache_qformat={precision.kv_cache if precision.kv_cache != 'auto' else 'none'}",
            f"--export_path={output}")


def model_yaml(dep: Deployment, model_dir: str) -> dict[str, Any]:
    """``1/model.yaml``: ``tensorrt_llm.LLM`` arguments plus the ``triton_config`` our model.py reads."""
    spec, backend = dep.spec, dep.spec.backend
    kv_cache: dict[str, Any] = {"free_gpu_memory_fraction": backend.kv_cache_memory_fraction,
                                "enable_block_reuse": backend.enable_kv_cache_reuse}
    if spec.precision.kv_cache != "auto":
        kv_cache["dtype"] = spec.precision.kv_cache
    return {
        "model": model_dir,
        "backend": "pytorch",
        "tensor_parallel_size": backend.tensor_parallel,
        "pipeline_parallel_size": backend.pipeline_parallel,
        "gpus_per_node": spec.hardware.gpus_per_node,
        "max_batch_size": backend.max_batch_size,
        "max_seq_len": spec.model.max_input_len + spec.model.max_output_len,
        "max_num_tokens": backend.max_num_tokens,
        "enable_chunked_prefill": backend.enable_chunked_context,
        "kv_cache_config": kv_cache,
        "triton_config": {"max_batch_size": 0, "decoupled": backend.streaming,
                          "cancellation_check_period_ms": CANCELLATION_CHECK_PERIOD_MS},
    }


def export(dep: Deployment, plan: Plan) -> bool:
    """The HF directory the server loads (or that calibration on a GPU reads)."""
    return export_hf(dep, hf_source(dep))


def server_ranks(dep: Deployment, command: ServerCommand) -> list[list[str]]:
    """Each rank runs ``trtllm-llmapi-launch tritonserver ...``: rank 0 serves, the others are LLM workers."""
    return rank_commands(dep, command, dep.spec.model.served_name, wrapper=LAUNCH)
