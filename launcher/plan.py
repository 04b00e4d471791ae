"""What a plan is made of: ordered steps, the export, the models to render, where workers run, and the
launch contract between backends and targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.spec import DeploySpec, ServerSpec


@dataclass(frozen=True)
class Step:
    """One ordered step of a plan, with the exact command where there is one."""

    kind: str  # export | quantize | build | render | launch
    description: str
    command: tuple[str, ...] = ()
    where: str = "here"  # here | target host | GPU host | cluster
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
    """A model directory to render: ``<templates>/<template>`` -> ``model_repository/<name>``, where
    ``templates`` is llm-launch's own folder unless the backend brings its own (an out-of-tree plugin)."""

    template: str
    name: str
    context: dict[str, Any] = field(default_factory=dict)
    templates: Path | None = None


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
    placement: list[Placement] = field(default_factory=list)  # empty on CPU hardware
    lock: dict[str, Any] = field(default_factory=dict)  # what lock.json records of the backend's choices


# ------------------------------------------------------------------------------- the launch contract
@dataclass(frozen=True)
class ServerCommand:
    """What the target decides for every ``tritonserver`` it starts: the binary, the repository as the
    server sees it, where to listen (a port may be a launch-script variable such as ``${http_port}``),
    and flags of its own (backend directory, CPU-only settings)."""

    tritonserver: str
    repository: str
    host: str
    http_port: str
    grpc_port: str
    metrics_port: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchFile:
    """A file ``render`` writes next to the model repository: a template with its context, a file to
    copy, or text."""

    path: str  # relative to output_dir
    template: str | None = None  # under templates/
    context: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    text: str | None = None
    executable: bool = False


@dataclass(frozen=True)
class Launch:
    """How the target starts the server(s), computed once per run: the plan step, the files to render,
    one server argv per rank (rank 0 first), where clients find the server, and the step that starts the
    OpenAI front end beside it (``server.openai``)."""

    step: Step
    files: tuple[LaunchFile, ...]
    ranks: tuple[tuple[str, ...], ...]
    server: ServerSpec
    environment: dict[str, str] = field(default_factory=dict)
    frontend: Step | None = None


@dataclass(frozen=True)
class Estimate:
    """What a spec can deliver at best, before deploying it: a decode step reads every weight a GPU holds
    once, so memory bandwidth bounds the tokens per second of one sequence; the memory left after the
    weights bounds how many full-length sequences the KV cache holds at once."""

    weights_gb: float  # per GPU (per host on CPU)
    decode_tokens_per_s: float  # one sequence, batch 1, at the hardware entry's memory bandwidth
    kv_sequences: int  # concurrent sequences of max_input_len + max_output_len tokens
    sequence_tokens: int


@dataclass
class Outcome:
    """What a run did, for the printer and for sweeps."""

    spec: DeploySpec
    steps: list[Step]
    placement: list[Placement] = field(default_factory=list)
    output_dir: str | None = None
    export_dir: str | None = None
    export_cached: bool = False  # the export was already in the cache (or used in place)
    export_seconds: float = 0.0
    estimate: Estimate | None = None  # the spec's speed and capacity bounds, where the architecture is known
