"""TensorRT-LLM backend: ``llmapi`` (Python-backend model over tensorrt_llm.llmapi) or legacy ``engine``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.backends.base import Plan, TritonModel, export_hf, export_step, hf_export, tritonserver_args
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.spec import BackendSpec, TrtllmRuntime


@dataclass
class TrtllmBackendSpec(BackendSpec):
    name: str = "trtllm"
    runtime: TrtllmRuntime = TrtllmRuntime.llmapi


class TrtllmBackend:
    name = "trtllm"
    spec_class = TrtllmBackendSpec

    def problems(self, dep: Deployment) -> list[Problem]:
        hw = dep.spec.hardware
        problems = []
        if hw.gpu is None:
            problems.append(Problem("hardware", "TensorRT-LLM needs an NVIDIA GPU; hardware=cpu has none",
                                    "pick a GPU hardware entry, e.g. hardware=h100x1"))
        elif hw.compute_capability < 7.0:
            problems.append(Problem("hardware", f"TensorRT-LLM needs compute capability >= 7.0 (Volta); "
                                    f"{hw.gpu} has {hw.compute_capability}", "pick a newer GPU"))
        if dep.checkpoint_format == "qnemo" and dep.spec.backend.runtime != TrtllmRuntime.engine:
            problems.append(Problem("backend.runtime", "a .qnemo is a TensorRT-LLM checkpoint: only the "
                                    "engine runtime builds it", "set backend.runtime=engine"))
        return problems

    def model_yaml(self, dep: Deployment, model_dir: str) -> dict[str, Any]:
        backend = dep.spec.backend
        return {
            "model": model_dir,
            "backend": "pytorch",
            "tensor_parallel_size": backend.tensor_parallel,
            "pipeline_parallel_size": backend.pipeline_parallel,
            "max_batch_size": backend.max_batch_size,
            "max_seq_len": dep.spec.model.max_input_len + dep.spec.model.max_output_len,
            "kv_cache_config": {"free_gpu_memory_fraction": backend.kv_cache_memory_fraction},
            "triton_config": {"max_batch_size": 0, "decoupled": backend.streaming},
        }

    def plan(self, dep: Deployment) -> Plan:
        export = hf_export(dep)
        model = TritonModel("trtllm/llmapi/tensorrt_llm", "tensorrt_llm",
                            {"model_yaml": self.model_yaml(dep, str(export.directory))})
        return Plan(export, [export_step(dep, export, "convert to a Hugging Face safetensors directory")], [model])

    def export(self, dep: Deployment, plan: Plan) -> None:
        export_hf(dep, plan.export)

    def server_args(self, dep: Deployment, tritonserver: str, repository: str) -> list[str]:
        return tritonserver_args(dep, tritonserver, repository)


BACKEND = TrtllmBackend()
