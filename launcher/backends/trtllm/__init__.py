"""TensorRT-LLM backend, two runtimes chosen by ``backend.runtime`` (one module each).

- ``llmapi`` (default, current TensorRT-LLM): one Python-backend model over ``tensorrt_llm.LLM``
  (``1/model.yaml`` holds the LLM arguments; the served directory is an HF checkpoint, pre-quantized
  by ModelOpt for fp8/int4_awq).
- ``engine`` (legacy C++ backend, and the only way to serve a ``.qnemo``): a TensorRT-LLM checkpoint
  in the export cache, a ``trtllm-build`` engine next to it, and the ``inflight_batcher_llm`` ensemble
  filled with every placeholder of tensorrtllm_backend v0.19.0's templates (shared/formats.md C.2).

Several ranks (tensor x pipeline parallel > 1) are one ``tritonserver`` per rank, as
``launch_triton_server.py`` builds them (formats.md C.3); the target decides how they start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType

from launcher.backends.base import CONVERTIBLE
from launcher.backends.trtllm import engine, llmapi, versions
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Plan, ServerCommand
from launcher.spec import BackendSpec, TrtllmRuntime


class BatchingStrategy(Enum):
    inflight_fused_batching = "inflight_fused_batching"
    inflight_batching = "inflight_batching"
    V1 = "V1"  # static batching


class BatchSchedulerPolicy(Enum):
    guaranteed_no_evict = "guaranteed_no_evict"
    max_utilization = "max_utilization"


@dataclass
class TrtllmBackendSpec(BackendSpec):
    name: str = "trtllm"
    runtime: TrtllmRuntime = TrtllmRuntime.llmapi
    max_num_tokens: int = 8192  # tokens per engine step (trtllm-build --max_num_tokens, LLM max_num_tokens)
    max_beam_width: int = 1
    exclude_input_in_output: bool = True  # engine: text_output holds only the generated text
    enable_kv_cache_reuse: bool = True  # prefix reuse (llmapi kv_cache_config.enable_block_reuse), upstream's default
    enable_chunked_context: bool = False  # chunked prefill (llmapi enable_chunked_prefill)
    cuda_graphs: bool = True  # llmapi cuda_graph_config (null turns them off); engine cuda_graph_mode
    speculative_decoding: str | None = None  # llmapi speculative_config.decoding_type, e.g. NGram, Eagle, MTP
    speculative_model: str | None = None  # the draft model / heads directory where the decoding type needs one
    max_draft_len: int = 4  # draft tokens per step with speculative_decoding
    batching_strategy: BatchingStrategy = BatchingStrategy.inflight_fused_batching  # engine gpt_model_type
    batch_scheduler_policy: BatchSchedulerPolicy = BatchSchedulerPolicy.guaranteed_no_evict
    bls: bool = False  # engine: also render tensorrt_llm_bls (a Python BLS entry point beside the ensemble)
    # TensorRT-LLM in the serving container; None: the one target.tag's container ships (launcher/containers.json);
    # set it to pick a container by version, or for a container the table has no version for. Keys the engine cache.
    trtllm_version: str | None = None
    engine_parameters: dict[str, str] = field(default_factory=dict)  # overrides of engine.ENGINE_DEFAULTS


def runtime(dep: Deployment):  # -> the runtime module
    return engine if dep.spec.backend.runtime == TrtllmRuntime.engine else llmapi


class TrtllmBackend:
    name = "trtllm"
    spec_class = TrtllmBackendSpec
    container_suffix = "trtllm-python-py3"
    engine_packages = ("tensorrt_llm",)
    checkpoint_formats = MappingProxyType({**CONVERTIBLE, "qnemo": "backend.runtime=engine"})
    architecture_tables = MappingProxyType({"backend.runtime=llmapi": "trtllm-llmapi",
                                            "backend.runtime=engine": engine.ENGINE_TABLE})
    serving_modules = MappingProxyType({})  # runs in NVIDIA's TensorRT-LLM container, never on this machine

    def problems(self, dep: Deployment) -> list[Problem]:
        hw = dep.spec.hardware
        problems = []
        if hw.gpu is None:
            problems.append(Problem("hardware", "TensorRT-LLM needs an NVIDIA GPU; hardware=cpu has none",
                                    "pick a GPU hardware entry, e.g. hardware=h100x1"))
        elif hw.compute_capability < 7.0:
            problems.append(Problem("hardware", f"TensorRT-LLM needs compute capability >= 7.0 (Volta); "
                                    f"{hw.gpu} has {hw.compute_capability}", "pick a newer GPU"))
        return problems + versions.problems(dep) + engine.parameter_problems(dep) + runtime(dep).problems(dep)

    def plan(self, dep: Deployment) -> Plan:
        return runtime(dep).plan(dep)

    def export(self, dep: Deployment, plan: Plan) -> bool:
        return runtime(dep).export(dep, plan)

    def server_ranks(self, dep: Deployment, plan: Plan, command: ServerCommand) -> list[list[str]]:
        return runtime(dep).server_ranks(dep, command)

    def container_tag(self, dep: Deployment) -> str:
        """The container the deployment renders for (``launcher/containers.json``)."""
        row = versions.container(dep)
        return row.tag if row else versions.containers.default(versions.runtime_name(dep)).tag

    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        """None: both runtimes run in NVIDIA's TensorRT-LLM container, which brings its backends."""
        return {}


BACKEND = TrtllmBackend()
