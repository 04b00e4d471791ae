"""Validation: each rule is a small function from a deployment to the problems it finds.

Every problem names the config key and the fix; all of them are reported together and stop the
run before anything is written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.sizing import GIB, memory_estimate
from launcher.spec import Action

Rule = Callable[[Deployment], list[Problem]]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # Triton's model-name charset, safe as a path component
MAX_NAME = 128
HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?")  # name, IPv4, IPv6
BREAKS = re.compile(r"[\n\r\x00]")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")  # an OpenAI model id (also a URL path: no spaces, ?, #)
ORIGIN = re.compile(r"\*|https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
HOST_PORT = re.compile(r"(?P<host>[^\s:]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")
MULTILINE_KEYS = {"smoke.prompt"}
FORMAT_NAMES = {"hf": "Hugging Face", "gguf": "GGUF", "nemo": "NeMo 1.0 .nemo", "nemo2": "NeMo 2.0",
                "qnemo": ".qnemo (TensorRT-LLM weights)"}


def architecture_known(dep: Deployment) -> list[Problem]:
    if dep.arch is not None or dep.load_problems:
        return []
    return [Problem("model.arch", f"unknown for model '{dep.spec.model.name}': the checkpoint is not on "
                    "this machine and the model config carries no arch",
                    "set model.checkpoint to local weights or add model.arch to the model config")]


def precision_fits_hardware(dep: Deployment) -> list[Problem]:
    precision, hw = dep.spec.precision, dep.spec.hardware
    if precision.needs_gpu and hw.gpu is None:
        return [Problem("precision", f"{precision.name} needs a GPU; hardware={hw.name} has none",
                        "use precision=auto, bf16 or fp32 on cpu")]
    if precision.min_compute_capability > hw.compute_capability and hw.gpu is not None:
        return [Problem("precision", f"{precision.name} needs compute capability >= "
                        f"{precision.min_compute_capability}; hardware={hw.name} ({hw.gpu}) has "
                        f"{hw.compute_capability}", "choose precision=bf16 or hardware with a newer GPU")]
    return []


def parallelism_fits_gpus(dep: Deployment) -> list[Problem]:
    backend, hw = dep.spec.backend, dep.spec.hardware
    world = backend.tensor_parallel * backend.pipeline_parallel
    if world > 1 and world > hw.total_gpus:
        return [Problem("backend.tensor_parallel", f"tensor_parallel x pipeline_parallel = {world} GPUs, "
                        f"but hardware={hw.name} has {hw.total_gpus}",
                        f"set backend.tensor_parallel<={max(hw.total_gpus, 1)} or pick larger hardware")]
    return []


def heads_divide_by_tp(dep: Deployment) -> list[Problem]:
    tp, arch = dep.spec.backend.tensor_parallel, dep.arch
    if arch is None or tp <= 1:
        return []
    problems = []
    if arch.num_attention_heads % tp:
        problems.append(Problem("backend.tensor_parallel", f"{arch.num_attention_heads} attention heads "
                                f"do not divide by tensor_parallel={tp}",
                                f"use a divisor of {arch.num_attention_heads}"))
    kv = arch.num_kv_heads
    if kv % tp and tp % kv:
        problems.append(Problem("backend.tensor_parallel", f"{kv} KV heads neither divide by nor replicate "
                                f"evenly over tensor_parallel={tp}", f"use a divisor or multiple of {kv}"))
    return problems


def pipeline_divides_layers(dep: Deployment) -> list[Problem]:
    pp, arch = dep.spec.backend.pipeline_parallel, dep.arch
    if arch is None or pp <= arch.num_layers:
        return []
    return [Problem("backend.pipeline_parallel", f"{pp} stages for {arch.num_layers} layers",
                    f"use at most {arch.num_layers}")]


def checkpoint_available(dep: Deployment) -> list[Problem]:
    return list(dep.load_problems)


MATCHED_FIELDS = ("architecture", "num_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_kv_heads", "head_dim", "vocab_size", "tie_word_embeddings", "num_experts")


def architecture_matches_checkpoint(dep: Deployment) -> list[Problem]:
    """A model entry's ``arch`` describes its own checkpoint: the weights found there must be that model. A
    checkpoint given on the command line without choosing an entry (``model=``) is the user's own, so the default
    entry's architecture gives way to the checkpoint's."""
    declared, ckpt = dep.spec.model.arch, dep.checkpoint
    own = any(o.startswith("model.checkpoint=") for o in dep.overrides) and not any(
        o.startswith("model=") for o in dep.overrides)
    if declared is None or ckpt is None or own:
        return []
    diffs = [f"{name}: config {getattr(declared, name)} vs checkpoint {getattr(ckpt.arch, name)}"
             for name in MATCHED_FIELDS if getattr(declared, name) != getattr(ckpt.arch, name)]
    if not diffs:
        return []
    return [Problem("model.arch", f"does not match the checkpoint at {ckpt.path} ({'; '.join(diffs)})",
                    "fix the model config or point model.checkpoint at the right weights (model=auto takes any)")]


def memory_fits(dep: Deployment) -> list[Problem]:
    """Weights + KV cache for max batch x max sequence must fit memory x kv_cache_memory_fraction."""
    arch, spec = dep.arch, dep.spec
    if arch is None or lengths_known(dep):
        return []
    estimate = memory_estimate(dep)
    budget = spec.hardware.memory_gb * GIB * spec.backend.kv_cache_memory_fraction
    if estimate["total"] <= budget:
        return []
    return [Problem("backend.max_batch_size", f"needs ~{estimate['weights'] / GIB:.1f} GiB weights + "
                    f"{estimate['kv_cache'] / GIB:.1f} GiB KV cache per "
                    f"{'GPU' if spec.hardware.gpu else 'host'}, over {spec.hardware.memory_gb:g} GiB x "
                    f"{spec.backend.kv_cache_memory_fraction} = {budget / GIB:.1f} GiB",
                    "lower backend.max_batch_size or model.max_input_len/max_output_len, raise "
                    "backend.tensor_parallel, or use a smaller precision")]


def lengths_known(dep: Deployment) -> list[Problem]:
    """Lengths left unset (model=auto) come from the checkpoint's positions; without the checkpoint they cannot."""
    model = dep.spec.model
    if (model.max_input_len is not None and model.max_output_len is not None) or dep.load_problems \
            or dep.arch is None:  # architecture_known says what is missing
        return []
    return [Problem("model.max_input_len", "is not set and the checkpoint is not on this machine to size it from",
                    "set model.max_input_len and model.max_output_len")]


def sequence_fits_model(dep: Deployment) -> list[Problem]:
    arch, model = dep.arch, dep.spec.model
    if arch is None:
        return []
    seq = (model.max_input_len or 0) + (model.max_output_len or 0)
    if seq <= arch.max_position_embeddings:
        return []
    return [Problem("model.max_input_len", f"max_input_len + max_output_len = {seq} exceeds the model's "
                    f"{arch.max_position_embeddings} positions", "lower model.max_input_len or max_output_len")]


# ------------------------------------------------------------------ rules on the spec's values alone
def positive_sizes(dep: Deployment) -> list[Problem]:
    spec = dep.spec
    checks = {
        "backend.tensor_parallel": spec.backend.tensor_parallel,
        "backend.pipeline_parallel": spec.backend.pipeline_parallel,
        "backend.max_batch_size": spec.backend.max_batch_size,
        "backend.instance_count": spec.backend.instance_count,
        "model.max_input_len": spec.model.max_input_len,
        "model.max_output_len": spec.model.max_output_len,
        "smoke.max_tokens": spec.smoke.max_tokens,
        "server.openai_max_body_bytes": spec.server.openai_max_body_bytes,
    }
    problems = [Problem(k, f"must be >= 1, got {v}", f"set {k}=1 or more") for k, v in checks.items()
                if v is not None and v < 1]  # None lengths come from the checkpoint (lengths_known)
    for key, value in (("backend.max_queue_delay_us", spec.backend.max_queue_delay_us),
                       ("server.log_verbose", spec.server.log_verbose)):
        if value < 0:
            problems.append(Problem(key, f"must be >= 0, got {value}", f"set {key}=0 or more"))
    for key, value, example in (("server.start_timeout_s", spec.server.start_timeout_s, 600),
                                ("server.openai_request_timeout_s", spec.server.openai_request_timeout_s, 600)):
        if not value > 0 or math.isinf(value):
            problems.append(Problem(key, f"must be > 0, got {value}", f"e.g. {key}={example}"))
    fraction = spec.backend.kv_cache_memory_fraction
    if not 0 < fraction <= 1 or math.isnan(fraction):
        problems.append(Problem("backend.kv_cache_memory_fraction", f"must be in (0, 1], got {fraction}",
                                "e.g. backend.kv_cache_memory_fraction=0.9"))
    return problems


def ports_in_range(dep: Deployment) -> list[Problem]:
    """Each port is 0 (pick a free one) or a TCP port, and no two fixed ports are the same (the front end's
    too, while it runs)."""
    server = dep.spec.server
    ports = {f"server.{key}": getattr(server, key) for key in server.port_keys()}
    problems = [Problem(key, f"{port} is not a TCP port (0-65535)", f"set {key}=<port>, or 0 to pick a free one")
                for key, port in ports.items() if not 0 <= port <= 65535]
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port and port in seen:
            problems.append(Problem(key, f"{port} is also {seen[port]}", f"give {key} a port of its own"))
        seen.setdefault(port, key)
    return problems


def host_is_an_address(dep: Deployment) -> list[Problem]:
    """``server.host`` is what the servers bind: an IP address or a host name, nothing a shell or URL parses."""
    host = dep.spec.server.host
    if HOST.fullmatch(host) or BREAKS.search(host):  # a line break is no_line_breaks' to report
        return []
    return [Problem("server.host", f"'{host}' is not an IP address or host name",
                    "e.g. server.host=127.0.0.1 (this machine only) or server.host=0.0.0.0 (every interface)")]


def names_are_path_components(dep: Deployment) -> list[Problem]:
    """Names become directory names (the deployment, the export cache entry, Triton's model directory)."""
    spec = dep.spec
    return [Problem(key, f"'{value}' is not a name of letters, digits, '_', '.' and '-' (starting with a letter "
                    f"or digit, at most {MAX_NAME} characters)", f"set {key}=<such a name>")
            for key, value in (("name", spec.name), ("model.name", spec.model.name),
                               ("model.served_name", spec.model.served_name))
            if not (NAME.fullmatch(value) and len(value) <= MAX_NAME) and not BREAKS.search(value)]


def openai_settings(dep: Deployment) -> list[Problem]:
    """The front end's keys: the API key's variable is a name (the key itself is never in the spec), model ids
    and CORS origins are what OpenAI clients and browsers send."""
    server, found = dep.spec.server, []
    name = server.openai_api_key_env
    if name is not None and not ENV_NAME.fullmatch(name):
        found.append(Problem("server.openai_api_key_env", f"'{name}' is not an environment variable name",
                             "name the variable that holds the key, e.g. server.openai_api_key_env=OPENAI_API_KEY "
                             "(never the key itself)"))
    ids = [dep.spec.model.served_name]
    for index, alias in enumerate(server.openai_aliases):
        key = f"server.openai_aliases[{index}]"
        if not (MODEL_ID.fullmatch(alias) and len(alias) <= 256) and not BREAKS.search(alias):
            found.append(Problem(key, f"'{alias}' is not a model id (letters, digits and _ . : / @ + -, starting "
                                 "with a letter or digit)", f"set {key}=<such an id>"))
        elif alias in ids:
            found.append(Problem(key, f"'{alias}' is already a model id (model.served_name or an earlier alias)",
                                 "list each id once"))
        ids.append(alias)
    for index, origin in enumerate(server.openai_cors_origins):
        key = f"server.openai_cors_origins[{index}]"
        if not ORIGIN.fullmatch(origin) and not BREAKS.search(origin):
            found.append(Problem(key, f"'{origin}' is not a browser origin", "e.g. https://app.example.com or "
                                 "http://localhost:3000 (scheme://host[:port], no path), or * for any"))
    return found


def openai_key_set(dep: Deployment) -> list[Problem]:
    """Serving here with an API key: the variable must hold one (the front end and the smoke query read it)."""
    spec, name = dep.spec, dep.spec.server.openai_api_key_env
    running = spec.action == Action.frontend or (spec.server.openai and spec.action in (Action.serve, Action.smoke))
    if not running or name is None or not ENV_NAME.fullmatch(name) or os.environ.get(name, "").strip():
        return []
    return [Problem("server.openai_api_key_env", f"the variable {name} is not set (or empty)",
                    f"export {name}=<the API key> before starting, or leave server.openai_api_key_env unset")]


def chat_template_readable(dep: Deployment) -> list[Problem]:
    """``model.chat_template_file`` is a text file here (it is copied into the render, or read by action=frontend)."""
    path = dep.spec.model.chat_template_file
    if path is None:
        return []
    try:
        Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror or str(err)
        return [Problem("model.chat_template_file", f"cannot read '{path}': {why}",
                        "point it at a Jinja chat template file, or leave it unset (the tokenizer's own)")]
    return []


def triton_url_given(dep: Deployment) -> list[Problem]:
    """action=frontend needs ``server.triton_url`` = HOST:GRPC_PORT of a running Triton."""
    url = dep.spec.server.triton_url
    match = HOST_PORT.fullmatch(url or "")
    if match and HOST.fullmatch(match["host"]) and 0 < int(match["port"]) <= 65535:
        return []
    return [Problem("server.triton_url", f"'{url}' is not HOST:GRPC_PORT" if url else
                    "is not set; action=frontend starts the front end in front of a running Triton",
                    "e.g. server.triton_url=127.0.0.1:8001 (Triton's gRPC port)")]


def no_line_breaks(dep: Deployment) -> list[Problem]:
    """Spec strings reach shell scripts, #SBATCH lines, pbtxt and YAML: a line break or NUL in one could
    end a line (or a comment) there, so none may hold one (the smoke prompt, which only a client sends, aside)."""
    return [Problem(key, "contains a line break or NUL character", "remove it")
            for key, value in strings(dep.spec) if key not in MULTILINE_KEYS and BREAKS.search(value)]


def strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """Every string in the spec (dict keys included) with the key that holds it."""
    if is_dataclass(value):
        for item in fields(value):
            yield from strings(getattr(value, item.name), f"{key}.{item.name}".lstrip("."))
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from strings(name, key)
            yield from strings(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from strings(item, f"{key}[{index}]")
    elif isinstance(value, str):
        yield key, value
    elif isinstance(value, Enum):
        yield key, str(value.value)


SPEC_RULES: tuple[Rule, ...] = (positive_sizes, ports_in_range, host_is_an_address, names_are_path_components,
                                openai_settings, no_line_breaks)

RULES: tuple[Rule, ...] = (
    checkpoint_available,
    architecture_known,
    lengths_known,
    architecture_matches_checkpoint,
    precision_fits_hardware,
    parallelism_fits_gpus,
    heads_divide_by_tp,
    pipeline_divides_layers,
    sequence_fits_model,
    memory_fits,
    chat_template_readable,
    openai_key_set,
)


def spec_problems(dep: Deployment) -> list[Problem]:
    """Problems with the spec's values alone; the other rules (and the backends' and targets') may assume
    there are none."""
    return [p for rule in SPEC_RULES for p in rule(dep)]


def problems(dep: Deployment) -> list[Problem]:
    """Every problem the generic rules find (the pipeline adds the backend's and the target's own)."""
    return spec_problems(dep) or [p for rule in RULES for p in rule(dep)]


def frontend_problems(dep: Deployment) -> list[Problem]:
    """action=frontend's problems: the spec's values, the Triton to front, the template, the API key."""
    return spec_problems(dep) or [p for rule in (triton_url_given, chat_template_readable, openai_key_set)
                                  for p in rule(dep)]


def checkpoint_readable(dep: Deployment, backend: str, readers: Mapping[str, Mapping[str, str]]) -> list[Problem]:
    """The chosen backend reads the checkpoint's format; else name the backends that do.

    ``readers``: each backend's name -> its ``checkpoint_formats`` (format -> the settings it needs there).
    """
    fmt = dep.checkpoint_format
    if fmt == "auto" or fmt in readers[backend]:
        return []
    able = [" ".join(filter(None, (f"backend={name}", formats[fmt]))) for name, formats in readers.items()
            if fmt in formats]
    return [Problem("model.checkpoint", f"backend={backend} cannot serve a {FORMAT_NAMES.get(fmt, fmt)} checkpoint",
                    f"use {' or '.join(able)}" if able else "convert it to a Hugging Face checkpoint first")]


def settings_hold(dep: Deployment, settings: str) -> bool:
    """Whether the spec has every ``key=value`` of ``settings`` (space-separated, e.g. ``backend.runtime=engine``;
    empty: always), as the backends' facts spell the settings a case needs."""
    for setting in settings.split():
        key, _, expected = setting.partition("=")
        value: Any = dep.spec
        for part in key.split("."):
            value = getattr(value, part, None)
        if str(value.value if isinstance(value, Enum) else value) != expected:
            return False
    return True


def architecture_loadable(dep: Deployment, backend: str, tables: Mapping[str, Mapping[str, str | None]]
                          ) -> list[Problem]:
    """The engine the chosen backend runs loads the checkpoint's architecture, as its table in
    ``launcher/checkpoints/architectures.json`` says; else one line naming the backends whose engines do.

    ``tables``: each backend's name -> its ``architecture_tables`` (the settings of a case -> the engine table that
    case uses; None: the backend loads any architecture). Skipped with ``model.trust_remote_code``: the
    checkpoint's own modeling code then defines the architecture.
    """
    from launcher.checkpoints import architectures

    arch = dep.arch
    if arch is None or dep.spec.model.trust_remote_code:
        return []
    engines = [engine for settings, engine in tables[backend].items() if settings_hold(dep, settings)]
    if not engines or any(engine is None or arch.architecture in architectures.supported(engine)
                          for engine in engines):
        return []
    able = [" ".join(filter(None, (f"backend={name}", settings))) for name, table in tables.items()
            for settings, engine in table.items()
            if engine is not None and arch.architecture in architectures.supported(engine)]
    fix = f"use {' or '.join(able)}" if able else "no engine here loads it; pick a checkpoint of a supported family"
    return [Problem("model.checkpoint", f"backend={backend} runs {architectures.describe(engines[0])}, which does "
                    f"not load {arch.architecture}",
                    f"{fix}; or, if the checkpoint ships its own modeling code, set model.trust_remote_code=true")]
