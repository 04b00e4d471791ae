"""The small interface every backend implements, and the pieces backends share."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, Placement, Plan, ServerCommand, Step
from launcher.spec import BackendSpec, CheckpointFormat

DTYPES = ("float32", "bfloat16", "float16")
CONVERTIBLE = MappingProxyType({"hf": "", "gguf": "", "nemo": "", "nemo2": ""})  # formats the HF converter reads


class Backend(Protocol):
    """A backend plugin: its spec schema, the facts it owns, and the stages it runs."""

    name: str
    spec_class: type[BackendSpec]
    container_suffix: str  # NVIDIA's Triton container for it: <registry>:<tag>-<suffix>
    engine_packages: tuple[str, ...]  # distributions whose versions lock.json records
    checkpoint_formats: Mapping[str, str]  # formats it serves -> the settings that needs ("" = any)
    # the settings of a case ("" = any) -> the engine table (launcher/checkpoints/architectures.json) of the
    # architectures that case loads; None: any architecture (the backend reads no weights, or loads its own)
    architecture_tables: Mapping[str, str | None]
    serving_modules: Mapping[str, str]  # modules this machine's Python needs to serve it here -> how to install

    def problems(self, dep: Deployment) -> list[Problem]:
        """Backend-specific validation rules."""
        ...

    def plan(self, dep: Deployment) -> Plan:
        """What to export, build and render, in order; touches nothing."""
        ...

    def export(self, dep: Deployment, plan: Plan) -> bool:
        """Produce ``plan.export`` (into the export cache) if it is not there yet; True when it was."""
        ...

    def server_ranks(self, dep: Deployment, plan: Plan, command: ServerCommand) -> list[list[str]]:
        """One server argv per rank, rank 0 first, each listening and flagged as ``command`` says."""
        ...

    def container_tag(self, dep: Deployment) -> str:
        """The tag of NVIDIA's container that serves this deployment when the target does not set one
        (a row of the version table, ``launcher/containers.json``)."""
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
            for rank in range(backend.world_size)]


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
    in_place = in_place and dep.hub is None  # a hub snapshot's path differs by host: export it by its commit
    if in_place and dep.spec.model.checkpoint:
        return Export("hf", Path(dep.checkpoint_path), None, dtype)
    key = dep.cache_key("hf", dtype=dtype)
    return Export("hf", dep.cache_root / key, key, dtype)


def export_step(dep: Deployment, export: Export, converter: str) -> Step:
    """The plan step that fills ``export`` (or notes it is used in place / already cached)."""
    where = "here" if dep.checkpoint is not None else "target host"
    remote_code = (" [trust_remote_code: the checkpoint's own Python code runs when the engine loads it]"
                   if dep.spec.model.trust_remote_code else "")
    if export.key is None:
        return Step("export", f"use the {dep.checkpoint_format} checkpoint in place: {export.directory}"
                    + remote_code, where=where, done=True)
    cached = export.directory.is_dir()
    source = f" from {dep.spec.model.checkpoint} (commit {dep.hub['commit']})" if dep.hub else ""
    return Step(
        "export",
        f"{converter}{source} ({export.dtype}) -> {export.directory}" + (" [cached]" if cached else "")
        + remote_code,
        command=dep.launcher_command("export"),
        where=where,
        done=cached,
    )


def export_hf(dep: Deployment, export: Export) -> bool:
    """Convert the checkpoint into ``export`` through the cache; True on a cache hit (or in place)."""
    from launcher import cache
    from launcher.convert import to_hf

    if export.key is None:
        return True
    checkpoint = dep.checkpoint
    assert checkpoint is not None  # validation requires local weights for export
    return cache.fill(export.directory, lambda tmp: to_hf(checkpoint, tmp, export.dtype))


def tritonserver_args(dep: Deployment, command: ServerCommand) -> list[str]:
    """One ``tritonserver`` listening where ``command`` says, with the spec's logging."""
    return [
        command.tritonserver,
        f"--model-repository={command.repository}",
        f"--http-address={command.host}",
        f"--http-port={command.http_port}",
        f"--grpc-address={command.host}",
        f"--grpc-port={command.grpc_port}",
        f"--metrics-address={command.host}",
        f"--metrics-port={command.metrics_port}",
        f"--log-verbose={dep.spec.server.log_verbose}",
        "--exit-timeout-secs=10",
        *command.flags,
    ]
