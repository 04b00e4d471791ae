"""What both TensorRT-LLM runtimes share: quantization rules, the KV cache dtype, the HF source, ranks."""

from __future__ import annotations

from pathlib import Path

from launcher.backends.base import hf_export, serving_dtype, tritonserver_args
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, ServerCommand

ENGINE_MODEL = "tensorrt_llm"  # the C++-backend model every rank above 0 loads
QFORMATS = {"FP8": "fp8", "W4A16_AWQ": "int4_awq", "W8A8_SQ_PER_CHANNEL": "int8_sq"}  # quant_algo -> qformat


def checkpoint_quant_algo(dep: Deployment) -> str | None:
    """The quantization the local checkpoint already carries (None when unknown or not quantized)."""
    return dep.checkpoint.quant_algo if dep.checkpoint is not None else None


def kv_cache_quant(dep: Deployment) -> str | None:
    """The KV cache's quantized dtype (``fp8``/``int8``), or None for a 16-bit KV cache: FP8 when the
    checkpoint carries calibrated FP8 KV scales (``kv_cache_quant_algo``), else the precision's."""
    if dep.checkpoint is not None and dep.checkpoint.kv_cache_quant_algo == "FP8":
        return "fp8"
    kv = dep.spec.precision.kv_cache
    return None if kv == "auto" else kv


def kv_scale_warning(dep: Deployment) -> str:
    """A plan warning when a quantized KV cache gets no calibrated scales (no calibration step runs and
    the checkpoint has none): the KV cache is then scaled by an uncalibrated 1.0."""
    if kv_cache_quant(dep) is None or needs_quantization(dep):
        return ""
    ckpt = dep.checkpoint
    if ckpt is not None and ckpt.kv_cache_quant_algo is not None:
        return ""
    return (" [warning: the checkpoint has no calibrated KV-cache scales; the KV cache uses scale 1.0 "
            "(calibrate it, e.g. with ModelOpt, or use precision.kv_cache=auto)]")


def needs_quantization(dep: Deployment) -> bool:
    """The precision asks for quantized weights that the checkpoint does not already carry."""
    return dep.spec.precision.quant_algo is not None and checkpoint_quant_algo(dep) is None


def hf_source(dep: Deployment) -> Export:
    """The HF directory to serve or calibrate: a quantized HF checkpoint as it is, else ``hf_export``."""
    if dep.checkpoint_format == "hf" and checkpoint_quant_algo(dep) is not None:
        return Export("hf", Path(str(dep.checkpoint_path)), None, serving_dtype(dep))
    return hf_export(dep)


def quantization_problems(dep: Deployment) -> list[Problem]:
    precision = dep.spec.precision
    have = checkpoint_quant_algo(dep)
    want = precision.quant_algo
    if have is None or want == have or precision.weights == "auto":
        return []
    if want is None:
        return [Problem("precision", f"the checkpoint is already quantized ({have}); precision="
                        f"{precision.name} would need its original weights",
                        "use precision=auto to serve it as it is")]
    return [Problem("precision", f"precision={precision.name} ({want}) but the checkpoint is quantized "
                    f"with {have}", "use precision=auto, or a checkpoint quantized the way you ask")]


def server_ranks(dep: Deployment, command: ServerCommand, rank_model: str, wrapper: tuple[str, ...] = ()
                 ) -> list[list[str]]:
    """One ``tritonserver`` per rank, as ``launch_triton_server.py`` builds them: rank 0 loads every model,
    the others only ``rank_model``; each rank has its own Python-backend shared-memory prefix. ``wrapper``
    (llmapi: ``trtllm-llmapi-launch``) goes in front of each rank's server when there are several."""
    single = tritonserver_args(dep, command)
    world = dep.spec.backend.world_size
    if world == 1:
        return [single]
    ranks = []
    for rank in range(world):
        own = ["--model-control-mode=explicit", f"--load-model={rank_model}"] if rank else []
        ranks.append([*wrapper, *single, *own, "--disable-auto-complete-config",
                      f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"])
    return ranks
