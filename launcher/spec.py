"""The typed deployment spec: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files under ``conf/<group>/`` pick a ``base_<name>`` schema from here and only set values,
so a misspelled key or a wrong type fails at compose time with Hydra's own message. After
composition :func:`to_spec` turns the ``DictConfig`` into plain dataclasses that the rest of the
pipeline reads and never mutates. (Not ``frozen=True``: Hydra then rejects command-line overrides.)
Backends and targets subclass ``BackendSpec``/``TargetSpec``; ``launcher.registry`` stores them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


class Action(Enum):
    plan = "plan"  # print the resolved spec and the ordered steps; writes nothing
    export = "export"  # convert the checkpoint into the export cache
    render = "render"  # model repository + launch files + spec.yaml + lock.json
    serve = "serve"  # export, render, start, wait until ready, smoke query, keep serving
    smoke = "smoke"  # as serve, then stop after the smoke query
    frontend = "frontend"  # only the OpenAI front end, in front of a running Triton (server.triton_url)
    bench = "bench"  # serve (or attach to bench.url), measure with aiperf, stop


class CheckpointFormat(Enum):
    auto = "auto"
    hf = "hf"
    nemo = "nemo"
    nemo2 = "nemo2"
    qnemo = "qnemo"
    gguf = "gguf"


class TrtllmRuntime(Enum):
    llmapi = "llmapi"  # current TensorRT-LLM: Python-backend model over tensorrt_llm.llmapi.LLM
    engine = "engine"  # legacy: trtllm-build engine + inflight_batcher_llm ensemble (C++ backend)


@dataclass
class ModelArch:
    """What the launcher needs to know of a decoder-only model, whatever its family, in Hugging Face terms.

    The first block every family has; the rest are optional and say how a family differs from a dense,
    full-attention decoder (mixture of experts, sliding-window layers, latent KV). ``family_config`` keeps the
    family's other ``config.json`` keys (Gemma's soft-capping, Granite's multipliers ...) for converters.
    """

    architecture: str = "LlamaForCausalLM"
    num_layers: int = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING  # the dense FFN width (MoE: see expert_intermediate_size)
    num_attention_heads: int = MISSING
    num_kv_heads: int = MISSING
    head_dim: int = MISSING
    vocab_size: int = MISSING
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None
    dtype: str = "bfloat16"  # dtype the weights are stored in
    # ---- optional, where a family has them
    parameters: int | None = None  # counted from the checkpoint's tensor headers; None: estimated from the sizes
    num_experts: int = 0  # routed experts per MoE layer (0: a dense model)
    experts_per_token: int = 0
    expert_intermediate_size: int | None = None  # FFN width of one expert (None: intermediate_size)
    shared_expert_intermediate_size: int = 0  # an always-active expert beside the routed ones
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    layer_types: list[str] | None = None  # per layer, e.g. full_attention / sliding_attention (None: all full)
    kv_lora_rank: int | None = None  # MLA (DeepSeek V2/V3): the latent KV width cached per token and layer
    qk_rope_head_dim: int = 0  # MLA: the rotary part cached beside the latent
    family_config: dict[str, Any] | None = None  # other config.json keys of the family, by their HF names

    def layer_windows(self) -> list[int | None]:
        """The tokens each layer's KV cache holds at most (None: the whole sequence)."""
        kinds = self.layer_types or ["sliding_attention" if self.sliding_window else "full_attention"] * self.num_layers
        return [self.sliding_window if kind in SLIDING_LAYERS and self.sliding_window else None for kind in kinds]


SLIDING_LAYERS = ("sliding_attention", "chunked_attention")


@dataclass
class ModelSpec:
    name: str = MISSING
    checkpoint: str | None = None  # path, or pkg:<python package>/<file> for a file a package ships
    format: CheckpointFormat = CheckpointFormat.auto
    source: str | None = None  # where the weights come from (e.g. a Hugging Face repo id), for people
    served_name: str = "llm"  # Triton model name clients call
    max_input_len: int | None = 2048  # None: from the checkpoint's positions (model=auto)
    max_output_len: int | None = 512
    chat_template: bool = True  # apply the tokenizer's chat template to prompts
    chat_template_file: str | None = None  # a Jinja chat template used instead of the tokenizer's
    arch: ModelArch | None = None  # carried by public models so plans work without the weights
    trust_remote_code: bool = False  # let the engine run Python code the checkpoint ships (never by default)


@dataclass
class BackendSpec:
    """Settings every backend understands; each backend module subclasses it with its own knobs."""

    name: str = MISSING
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    streaming: bool = False  # decoupled transaction policy
    kv_cache_memory_fraction: float = 0.9

    @property
    def world_size(self) -> int:
        """GPU ranks one deployment runs: tensor x pipeline parallel."""
        return self.tensor_parallel * self.pipeline_parallel


@dataclass
class PrecisionSpec:
    name: str = MISSING
    weights: str = "auto"  # auto | float32 | bfloat16 | float16 | fp8 | int8 | int4
    activations: str = "auto"
    kv_cache: str = "auto"  # auto | fp8 | int8
    min_compute_capability: float = 0.0
    quant_algo: str | None = None  # TensorRT-LLM QuantAlgo name, e.g. FP8, W8A8_SQ_PER_CHANNEL, W4A16_AWQ
    needs_gpu: bool = False


@dataclass
class HardwareSpec:
    name: str = MISSING
    gpu: str | None = None  # None: CPU only
    compute_capability: float = 0.0
    memory_gb: float = 16.0  # per GPU (host memory for cpu)
    memory_bandwidth_gbps: float = 50.0
    gpus_per_node: int = 0
    nodes: int = 1

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass
class TargetSpec:
    name: str = MISSING


@dataclass
class ContainerTargetSpec(TargetSpec):
    """Targets that run NVIDIA's Triton container ``<registry>:<tag>-<suffix>``, the suffix being the
    backend's own (``Backend.container_suffix``) unless set here; ``tag: null`` is the default row of
    ``launcher/containers.json`` for the backend (and runtime)."""

    registry: str = "nvcr.io/nvidia/tritonserver"
    tag: str | None = None
    suffix: str | None = None


@dataclass
class HostTritonSpec(TargetSpec):
    """Targets that run this machine's ``tritonserver`` (local; Slurm without a container image)."""

    tritonserver: str | None = None  # None: the binary shipped in the nvidia-pytriton wheel
    # When this Python has numpy >= 2 (which the Triton 2.51 stub cannot take), build an overlay
    # environment with numpy < 2 in the cache (DESIGN section 10); from wheel_dir on offline hosts.
    prepare_serving_env: bool = True
    wheel_dir: str | None = None


PORT_KEYS = ("http_port", "grpc_port", "metrics_port")  # Triton's
OPENAI_PORT = "openai_port"


@dataclass
class ServerSpec:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    start_timeout_s: float = 600.0
    log_verbose: int = 0
    # the OpenAI-compatible front end (python -m launcher.frontend) beside Triton
    openai: bool = True
    openai_port: int = 9000
    openai_api_key_env: str | None = None  # the NAME of the variable holding the API key (never the key)
    openai_aliases: list[str] = field(default_factory=list)  # more model ids beside model.served_name
    openai_max_body_bytes: int = 1 << 20
    openai_request_timeout_s: float = 600.0
    openai_cors_origins: list[str] = field(default_factory=list)  # browser origins allowed (empty: CORS off)
    triton_url: str | None = None  # HOST:GRPC_PORT of a running Triton, for action=frontend

    def port_keys(self) -> tuple[str, ...]:
        """The ports this deployment listens on: Triton's, and the front end's when it runs."""
        return (*PORT_KEYS, OPENAI_PORT) if self.openai else PORT_KEYS


@dataclass
class SmokeSpec:
    prompt: str = "What is the capital of France?"
    max_tokens: int = 32


@dataclass
class BenchSpec:
    """``action=bench``: aiperf against the deployment's OpenAI endpoint, one run per concurrency."""

    url: str | None = None  # attach to this OpenAI endpoint (http://host:port/v1) instead of serving the spec
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    input_tokens: int = 128  # synthetic prompt length (fixed seed, no spread)
    output_tokens: int = 64  # tokens asked per request (ignore_eos: every request makes them all)
    requests: int | None = 8  # per concurrency (raise it for steadier percentiles); null: send for duration_s
    duration_s: float | None = None
    endpoint: str = "chat"  # chat | completions
    seed: int = 0
    sla: str | None = None  # goodput bounds, e.g. 'ttft_p95_ms=500 itl_p95_ms=100'
    warmup_requests: int = 1  # per concurrency, not counted
    server_token_count: bool = True  # token counts from the server's usage reports
    ignore_eos: bool = True
    timeout_s: float = 600.0  # per concurrency


@dataclass
class DeploySpec:
    action: Action = Action.serve
    name: str = "${model.name}-${backend.name}-${precision.name}"
    output_dir: str = "deployments/${name}"
    cache_dir: str = "${oc.env:LLM_LAUNCH_CACHE,'~/.cache/llm-launch'}"
    model: ModelSpec = MISSING
    backend: BackendSpec = MISSING
    precision: PrecisionSpec = MISSING
    hardware: HardwareSpec = MISSING
    target: TargetSpec = MISSING
    server: ServerSpec = field(default_factory=ServerSpec)
    smoke: SmokeSpec = field(default_factory=SmokeSpec)
    bench: BenchSpec = field(default_factory=BenchSpec)


CHECKPOINT_SUFFIXES = (".gguf", ".nemo", ".qnemo", ".tar", ".tgz", ".gz")


def checkpoint_name(checkpoint: str | None) -> str:
    """A model name from a checkpoint's directory or file name (``/models/Qwen3-8B`` -> ``Qwen3-8B``,
    ``hf://Qwen/Qwen3-8B@main`` -> ``Qwen3-8B``, ``tiny.q8_0.gguf`` -> ``tiny.q8_0``), sanitised to
    ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (at most 128 characters); ``model`` when nothing is left."""
    text = (checkpoint or "").rstrip("/")
    if text.startswith("hf://"):
        text = text.split("@", 1)[0]
    base = re.split(r"[/\\]", text)[-1]
    while base.lower().endswith(CHECKPOINT_SUFFIXES):
        base = base[: base.rfind(".")]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).lstrip("_.-")[:128].rstrip("_.-")
    return name or "model"


OmegaConf.register_new_resolver("checkpoint_name", checkpoint_name, replace=True)


def to_spec(cfg: DictConfig) -> DeploySpec:
    """Resolve interpolations and return the typed spec."""
    spec = OmegaConf.to_object(cfg)
    assert isinstance(spec, DeploySpec)
    return spec


def plain(value: Any) -> Any:
    """The spec as plain YAML-able values, every string escaped for OmegaConf: a literal ``${`` (typed as
    ``\\${`` on the command line) must stay text when Hydra reads ``spec.yaml`` back, not become an
    interpolation again."""
    if is_dataclass(value):
        return {item.name: plain(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):  # n backslashes before "${" become 2n + 1: each escaped, then the "${"
        return re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m[1]) + 1) + "${", value)
    return value


def to_yaml(spec: DeploySpec) -> str:
    """The fully resolved spec as YAML (what ``spec.yaml`` holds) that Hydra reads back to the same values."""
    import yaml

    return yaml.safe_dump(plain(spec), sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)
