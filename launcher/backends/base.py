"""The small interface every backend implements, and the pieces they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from launcher.errors import Problem
from launcher.spec import BackendSpec, CheckpointFormat

if TYPE_CHECKING:
    from launcher.deployment import Deployment

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Step:
    """One ordered step of a plan, with the exact command where there is one."""

    kind: str  # export | quantize | build | render | launch
    description: str
    command: tuple[str, ...] = ()
    where: str = "here"  # here | target host | GPU host
    done: bool = False  # already satisfied (e.g. an export cache hit)


@dataclass(frozen=True)
class Export:
    """What a backend consumes and where it lives (on the host that runs the server)."""

    kind: str  # hf | trtllm_checkpoint
    directory: Path
    key: str | None  # export-cache key; None when the checkpoint is used in place
    dtype: str


@dataclass(frozen=True)
class TritonModel:
    """A model directory to render: ``templates/<template>`` -> ``model_repository/<name>``."""

    template: str
    name: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """The GPU one worker (a model instance, or a tensor/pipeline-parallel rank) runs on."""

    worker: str
    node: int
    gpu: int


@dataclass
class Plan:
    export: Export
    steps: list[Step]
    models: list[TritonModel]
    # server processes a cluster target starts, one per GPU rank, each running ``server_args`` (1: one
    # process, or a command such as ``mpirun`` that starts its own ranks); the Slurm target's ``srun --ntasks``
    ranks: int = 1
    placement: list[Placement] = field(default_factory=list)  # empty on CPU hardware


class Backend(Protocol):
    name: str
    spec_class: type[BackendSpec]

    def problems(self, dep: Deployment) -> list[Problem]:
        """Backend-specific validation rules."""
        ...

    def plan(self, dep: Deployment) -> Plan:
        """What to export, build and render, in order; touches nothing."""
        ...

    def export(self, dep: Deployment, plan: Plan) -> None:
        """Produce ``plan.export`` (into the export cache) if it is not there yet."""
        ...

    def server_args(self, dep: Deployment, tritonserver: str, repository: str) -> list[str]:
        """The command that starts the server(s) for this backend."""
        ...

    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        """Triton backends this backend brings for the local server: ``<backend dir>/<file>`` -> source.

        The local target renders them into ``<output_dir>/backends/`` beside the wheel's ``python``
        backend (a directory holding only ``model.py`` is a Python-based backend); ``{}`` for none.
        """
        ...


def rank_placement(dep: Deployment) -> list[Placement]:
    """Tensor x pipeline-parallel ranks on the hardware's GPUs: rank = pp_rank * tp + tp_rank, placed on
    GPU ``rank % gpus_per_node`` of node ``rank // gpus_per_node`` (TensorRT-LLM's and vLLM's order)."""
    backend, hw = dep.spec.backend, dep.spec.hardware
    if hw.gpu is None:
        return []
    tp, per_node = backend.tensor_parallel, max(hw.gpus_per_node, 1)
    return [Placement(f"rank {rank} (tp {rank % tp}, pp {rank // tp})", rank // per_node, rank % per_node)
            for rank in range(tp * backend.pipeline_parallel)]


def serving_dtype(dep: Deployment) -> str:
    """The dtype weights are served in: the precision's, or the checkpoint's own for ``auto``."""
    weights = dep.spec.precision.weights
    if weights in DTYPES:
        return weights
    if weights == "auto":
        return dep.arch.dtype if dep.arch.dtype in DTYPES else "bfloat16"
    return "bfloat16"  # quantized weights keep 16-bit activations


def hf_export(dep: Deployment) -> Export:
    """An HF safetensors directory: the checkpoint itself when it already is one in the right dtype."""
    dtype = serving_dtype(dep)
    ckpt = dep.checkpoint
    in_place = ckpt is None and dep.spec.model.format in (CheckpointFormat.hf, CheckpointFormat.auto)
    if ckpt is not None:
        in_place = ckpt.format == "hf" and ckpt.arch.dtype == dtype
    if in_place and dep.spec.model.checkpoint:
        return Export("hf", Path(dep.checkpoint_path), None, dtype)
    key = dep.cache_key("hf", dtype=dtype)
    return Export("hf", dep.cache_root / key, key, dtype)


def export_step(dep: Deployment, export: Export, converter: str) -> Step:
    """The plan step that fills ``export`` (or notes it is used in place / already cached)."""
    where = "here" if dep.checkpoint is not None else "target host"
    if export.key is None:
        return Step("export", f"use the {dep.checkpoint_format} checkpoint in place: {export.directory}",
                    where=where, done=True)
    cached = export.directory.is_dir()
    return Step(
        "export",
        f"{converter} ({export.dtype}) -> {export.directory}" + (" [cached]" if cached else ""),
        command=dep.launcher_command("export"),
        where=where,
        done=cached,
    )


def export_hf(dep: Deployment, export: Export) -> bool:
    """Convert the checkpoint into ``export`` through the cache; True on a cache hit."""
    from launcher import cache
    from launcher.convert import to_hf

    if export.key is None:
        return True
    checkpoint = dep.checkpoint
    assert checkpoint is not None  # validation requires local weights for export
    return cache.fill(export.directory, lambda tmp: to_hf(checkpoint, tmp, export.dtype))


def tritonserver_args(dep: Deployment, tritonserver: str, repository: str) -> list[str]:
    """A single ``tritonserver`` bound to ``server.host`` with the spec's ports."""
    server = dep.spec.server
    return [
        tritonserver,
        f"--model-repository={repository}",
        f"--http-address={server.host}",
        f"--http-port={server.http_port}",
        f"--grpc-address={server.host}",
        f"--grpc-port={server.grpc_port}",
        f"--metrics-address={server.host}",
        f"--metrics-port={server.metrics_port}",
        f"--log-verbose={server.log_verbose}",
        "--exit-timeout-secs=10",
    ]
