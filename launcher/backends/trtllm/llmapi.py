"""The llmapi runtime: one Python-backend model over ``tensorrt_llm.LLM`` serving an HF directory
(``1/model.yaml`` holds the LLM arguments, keys checked against the LlmArgs schema of the TensorRT-LLM
version rendered for); fp8/int4_awq/int8_sq come from a ModelOpt export planned here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher.backends.base import export_hf, export_step, rank_placement, serving_dtype
from launcher.backends.trtllm import versions
from launcher.backends.trtllm.common import (
    QFORMATS,
    hf_source,
    kv_cache_quant,
    kv_scale_warning,
    needs_quantization,
    quantization_problems,
)
from launcher.backends.trtllm.common import server_ranks as rank_commands
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, Plan, ServerCommand, Step, TritonModel

# Model-Optimizer's canonical qformat names (0.4x preset basenames; QFORMATS' short names are aliases there)
MODELOPT_QFORMATS = {"int8_sq": "int8_smoothquant"}
CANCELLATION_CHECK_PERIOD_MS = 100
LAUNCH = ("trtllm-llmapi-launch",)  # wraps each rank's server when there are several


def problems(dep: Deployment) -> list[Problem]:
    if dep.checkpoint_format == "qnemo":
        return [Problem("backend.runtime", "a .qnemo is a TensorRT-LLM checkpoint: only the engine runtime "
                        "builds it", "set backend.runtime=engine")]
    found = quantization_problems(dep)
    wanted = dep.spec.backend.speculative_decoding
    version = versions.trtllm_version(dep)
    if wanted and version in versions.RENDERS["llmapi"]:
        known = versions.llm_args_schema(version)["decoding_types"]
        if wanted not in known:
            found.append(Problem("backend.speculative_decoding", f"'{wanted}' is not a decoding type of TensorRT-LLM "
                                 f"{version}", f"use one of {', '.join(known)}"))
    return found


def plan(dep: Deployment) -> Plan:
    hf = hf_source(dep)
    steps = [export_step(dep, hf, "convert to a Hugging Face safetensors directory")]
    served = hf
    if needs_quantization(dep):
        served = modelopt_export(dep)
        steps.append(Step("quantize", f"ModelOpt {versions.MODELOPT} {dep.spec.precision.name} calibration (needs a "
                          f"GPU) -> {served.directory} (skip when the checkpoint is already a ModelOpt HF export)",
                          modelopt_command(dep, hf.directory, served.directory), where="GPU host",
                          done=served.directory.is_dir()))
    elif warning := kv_scale_warning(dep):
        steps[0] = replace(steps[0], description=steps[0].description + warning)
    model = TritonModel("trtllm/llmapi/tensorrt_llm", dep.spec.model.served_name,
                        {"model_yaml": model_yaml(dep, str(served.directory))})
    return Plan(served, steps, [model], placement=rank_placement(dep), lock=versions.lock(dep))


def modelopt_export(dep: Deployment) -> Export:
    precision = dep.spec.precision
    key = dep.cache_key("hf-modelopt", quant_algo=precision.quant_algo, kv_cache=precision.kv_cache,
                        modelopt=versions.MODELOPT)
    return Export("hf", dep.cache_root / key, key, serving_dtype(dep))


def modelopt_qformat(quant_algo: str | None, known: list[str]) -> str:
    """Model-Optimizer's ``--qformat`` for a TensorRT-LLM quant_algo: the canonical preset name where the
    release has it, else the short name."""
    short = QFORMATS[str(quant_algo)]
    return MODELOPT_QFORMATS.get(short, short) if MODELOPT_QFORMATS.get(short) in known else short


def modelopt_command(dep: Deployment, source: Path, output: Path) -> tuple[str, ...]:
    """``hf_ptq.py`` of the Model-Optimizer release ``versions.MODELOPT`` (its path and names)."""
    release = versions.modelopt()
    kv = dep.spec.precision.kv_cache
    return ("python", release["script"], f"--pyt_ckpt_path={source}",
            f"--qformat={modelopt_qformat(dep.spec.precision.quant_algo, release['qformats'])}",
            f"--kv_cache_qformat={kv if kv != 'auto' else 'none'}", f"--export_path={output}")


def model_yaml(dep: Deployment, model_dir: str) -> dict[str, Any]:
    """``1/model.yaml``: ``tensorrt_llm.LLM`` (TorchLlmArgs) arguments plus the ``triton_config`` our
    model.py reads. Prefix reuse is on unless ``backend.enable_kv_cache_reuse=false``; the KV cache is FP8
    when the checkpoint carries FP8 KV scales (or the precision asks for it)."""
    spec, backend = dep.spec, dep.spec.backend
    kv_cache: dict[str, Any] = {"free_gpu_memory_fraction": backend.kv_cache_memory_fraction,
                                "enable_block_reuse": backend.enable_kv_cache_reuse}
    if kv := kv_cache_quant(dep):
        kv_cache["dtype"] = kv
    speculative: dict[str, Any] = {}
    if backend.speculative_decoding:
        speculative = {"decoding_type": backend.speculative_decoding, "max_draft_len": backend.max_draft_len}
        if backend.speculative_model:
            speculative["speculative_model"] = backend.speculative_model
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
        "cuda_graph_config": {"max_batch_size": backend.max_batch_size} if backend.cuda_graphs else None,
        **({"speculative_config": speculative} if speculative else {}),
        **({"trust_remote_code": True} if spec.model.trust_remote_code else {}),
        "triton_config": {"max_batch_size": 0, "decoupled": backend.streaming,
                          "cancellation_check_period_ms": CANCELLATION_CHECK_PERIOD_MS},
    }


def export(dep: Deployment, plan: Plan) -> bool:
    """The HF directory the server loads (or that calibration on a GPU reads)."""
    return export_hf(dep, hf_source(dep))


def server_ranks(dep: Deployment, command: ServerCommand) -> list[list[str]]:
    """Each rank runs ``trtllm-llmapi-launch tritonserver ...``: rank 0 serves, the others are LLM workers."""
    return rank_commands(dep, command, dep.spec.model.served_name, wrapper=LAUNCH)
