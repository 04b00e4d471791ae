"""The engine runtime (legacy C++ backend, and the only way to serve a ``.qnemo``): a TensorRT-LLM
checkpoint in the export cache, a ``trtllm-build`` engine next to it, and the ``inflight_batcher_llm``
ensemble filled with every placeholder of tensorrtllm_backend v0.19.0's templates (formats.md C.2)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from launcher.backends.base import DTYPES, export_hf, export_step, rank_placement, serving_dtype
from launcher.backends.trtllm import versions
from launcher.backends.trtllm.common import (
    ENGINE_MODEL,
    QFORMATS,
    checkpoint_quant_algo,
    hf_source,
    kv_cache_quant,
    kv_scale_warning,
    needs_quantization,
    quantization_problems,
)
from launcher.backends.trtllm.common import server_ranks as rank_commands
from launcher.checkpoints import architectures
from launcher.convert.trtllm_writer import TRTLLM_FAMILIES, writable
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Export, Plan, ServerCommand, Step, TritonModel

ENGINE_TABLE = "trtllm-engine"  # architectures.json's list of what TensorRT engines build
TRITON_DTYPES = {"float32": "TYPE_FP32", "bfloat16": "TYPE_BF16", "float16": "TYPE_FP16"}

# Documented defaults of the inflight_batcher_llm placeholders that no spec key sets (tensorrtllm_backend
# docs/model_config.md); "" leaves a parameter unset, which the backend reads as "use the built-in default".
ENGINE_DEFAULTS: dict[str, str] = {
    "triton_backend": "tensorrtllm",  # the C++ backend ("python" selects the Python runtime)
    "max_queue_size": "0",  # fill_template.py's own default: unbounded queue
    "logits_datatype": "TYPE_FP32",
    "encoder_engine_dir": "",  # encoder-decoder models only
    "max_tokens_in_paged_kv_cache": "",  # unset: kv_cache_free_gpu_mem_fraction decides
    "max_attention_window_size": "",  # unset: max_seq_len
    "sink_token_length": "",
    "cross_kv_cache_fraction": "",  # encoder-decoder models only
    "kv_cache_host_memory_bytes": "0",
    "kv_cache_onboard_blocks": "true",
    "enable_trt_overlap": "false",
    "cancellation_check_period_ms": "100",
    "stats_check_period_ms": "100",
    "iter_stats_max_iterations": "1000",
    "request_stats_max_iterations": "0",
    "normalize_log_probs": "true",
    "gpu_device_ids": "",  # unset: every visible GPU
    "participant_ids": "",  # orchestrator mode only
    "lora_cache_optimal_adapter_size": "8",
    "lora_cache_max_adapter_size": "64",
    "lora_cache_gpu_memory_fraction": "0.05",
    "lora_cache_host_memory_bytes": "1073741824",
    "lora_prefetch_dir": "",
    "decoding_mode": "",  # unset: chosen from the request (top_k / top_p / beam_search)
    "lookahead_window_size": "",
    "lookahead_ngram_size": "",
    "lookahead_verification_set_size": "",
    "medusa_choices": "",
    "eagle_choices": "",
    "gpu_weights_percent": "1.0",
    "enable_context_fmha_fp32_acc": "false",
    "multi_block_mode": "true",
    "cuda_graph_mode": "false",
    "cuda_graph_cache_size": "0",
    "speculative_decoding_fast_logits": "false",
    "guided_decoding_backend": "",
    "xgrammar_tokenizer_info_path": "",
    "add_special_tokens": "true",
    "multimodal_model_path": "",
    "max_num_images": "",
    "skip_special_tokens": "true",
    "accumulate_tokens": "false",
    "tensorrt_llm_draft_model_name": "",
    "multimodal_encoders_name": "",
}


PARAMETER_KINDS = {  # what a placeholder's documented default says its values are
    "a boolean (true or false)": re.compile(r"true|false"),
    "an integer": re.compile(r"-?[0-9]+"),
    "a number": re.compile(r"-?[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?"),
    "a type name (like TYPE_FP32)": re.compile(r"TYPE_[A-Z0-9_]+"),
}


def param(value: object) -> str:
    """A placeholder value as ``fill_template.py`` would write it (bools as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------------------- validation
def problems(dep: Deployment) -> list[Problem]:
    spec, backend = dep.spec, dep.spec.backend
    problems = qnemo_problems(dep) if dep.checkpoint_format == "qnemo" else []
    problems += quantization_problems(dep)
    have = checkpoint_quant_algo(dep)
    loads = dep.arch is not None and dep.arch.architecture in architectures.supported(ENGINE_TABLE)
    if dep.checkpoint_format != "qnemo" and not needs_quantization(dep) and loads and not writable(dep.arch):
        problems.append(Problem("backend.runtime", f"llm-launch cannot write a TensorRT-LLM checkpoint of "
                                f"{dep.arch.architecture} for the engine runtime (it writes {TRTLLM_FAMILIES})",
                                "use backend.runtime=llmapi, which serves the HF checkpoint itself"))
    if have not in (None, "FP8") and dep.checkpoint_format != "qnemo":
        problems.append(Problem("backend.runtime", f"the engine runtime converts 16-bit and FP8 checkpoints; "
                                f"this one is quantized with {have}", "use backend.runtime=llmapi"))
    if backend.max_num_tokens < spec.model.max_input_len and not backend.enable_chunked_context:
        problems.append(Problem("backend.max_num_tokens", f"{backend.max_num_tokens} is below "
                                f"model.max_input_len={spec.model.max_input_len}: a prompt cannot fit one step",
                                f"set backend.max_num_tokens>={spec.model.max_input_len} or "
                                "backend.enable_chunked_context=true"))
    return problems


def parameter_problems(dep: Deployment) -> list[Problem]:
    """``backend.engine_parameters`` may only set placeholders no spec key sets, each with a value of the
    kind its documented default has (a boolean, an integer, a number, a type name; else free text, which
    the templates write as a quoted string)."""
    parameters = dep.spec.backend.engine_parameters
    unknown = sorted(set(parameters) - set(ENGINE_DEFAULTS))
    if unknown:
        return [Problem(f"backend.engine_parameters.{unknown[0]}", "is not a placeholder this launcher leaves to "
                        "defaults (spec keys set the others)", f"use one of {', '.join(sorted(ENGINE_DEFAULTS))}")]
    problems = []
    for key, value in parameters.items():
        kind = next((name for name, pattern in PARAMETER_KINDS.items() if pattern.fullmatch(ENGINE_DEFAULTS[key])),
                    None)
        if kind is not None and value != "" and not PARAMETER_KINDS[kind].fullmatch(str(value)):
            problems.append(Problem(f"backend.engine_parameters.{key}", f"{value!r} is not {kind}",
                                    f"give it {kind}, like its default {ENGINE_DEFAULTS[key]!r}"))
    return problems


def qnemo_problems(dep: Deployment) -> list[Problem]:
    """A .qnemo's tensor/pipeline split is fixed by the file."""
    backend = dep.spec.backend
    mapping = (dep.checkpoint.mapping if dep.checkpoint else None) or {}
    problems = []
    for key, saved in (("tensor_parallel", mapping.get("tp_size", 1)),
                       ("pipeline_parallel", mapping.get("pp_size", 1))):
        asked = getattr(backend, key)
        if saved != asked:
            problems.append(Problem(f"backend.{key}", f"the .qnemo was saved for {key}={saved}; the spec "
                                    f"asks for {asked} (its split is fixed by the file)",
                                    f"set backend.{key}={saved}"))
    return problems


# ----------------------------------------------------------------------------------------------- plan
def engine_export(dep: Deployment) -> Export:
    """The cache entry the engine runtime serves from: ``checkpoint/`` (TensorRT-LLM checkpoint +
    tokenizer) and ``engines/<build key>/``; one directory, so a container mounts it once."""
    spec = dep.spec
    dtype = serving_dtype(dep)
    key = dep.cache_key("trtllm", dtype=dtype, tp=spec.backend.tensor_parallel,
                        pp=spec.backend.pipeline_parallel, quant_algo=spec.precision.quant_algo,
                        kv_cache=kv_cache_quant(dep))
    return Export("trtllm_checkpoint", dep.cache_root / key, key, dtype)


def build_command(dep: Deployment, checkpoint_dir: Path, engine_dir: Path) -> tuple[str, ...]:
    """The exact ``trtllm-build`` for the spec's limits, with the flags of the version rendered for
    (fp8: FP8 context FMHA; the checkpoint's ``kv_cache_quant_algo`` carries the FP8 KV cache)."""
    spec, backend = dep.spec, dep.spec.backend
    known = set(versions.facts(versions.ENGINE_FACTS)["trtllm_build"]["flags"])
    fp8 = spec.precision.activations == "fp8" or checkpoint_quant_algo(dep) == "FP8"
    paged_context = fp8 or backend.enable_chunked_context or backend.enable_kv_cache_reuse
    command = [
        "trtllm-build", f"--checkpoint_dir={checkpoint_dir}", f"--output_dir={engine_dir}",
        "--gemm_plugin=auto", f"--max_batch_size={backend.max_batch_size}",
        f"--max_input_len={spec.model.max_input_len}",
        f"--max_seq_len={spec.model.max_input_len + spec.model.max_output_len}",
        f"--max_num_tokens={backend.max_num_tokens}", f"--max_beam_width={backend.max_beam_width}",
        "--kv_cache_type=paged", f"--workers={backend.world_size}",
    ]
    if "--gpus_per_node" in known:  # <= 1.1: build_model copies it into the engine's mapping (>= 1.2: the
        # flag is gone and the checkpoint's mapping carries it); each rank runs on GPU rank % gpus_per_node
        command.append(f"--gpus_per_node={dep.spec.hardware.gpus_per_node}")
    if paged_context:
        command.append("--use_paged_context_fmha=enable")
    if fp8:
        command.append("--use_fp8_context_fmha=enable")
    return tuple(command)


def engine_dir(dep: Deployment, export: Export) -> Path:
    """Engines keyed by checkpoint (the entry's key) + build settings + TensorRT-LLM version."""
    build = build_command(dep, Path("ckpt"), Path("engine"))
    key = dep.cache_key("engine", checkpoint=export.key, build=build, trtllm=versions.trtllm_version(dep))
    return export.directory / "engines" / key.rsplit("-", 1)[-1]


def plan(dep: Deployment) -> Plan:
    spec = dep.spec
    export = engine_export(dep)
    checkpoint_dir = export.directory / "checkpoint"
    engines = engine_dir(dep, export)
    cached = checkpoint_dir.is_dir()
    where = "here" if dep.checkpoint is not None else "target host"
    steps: list[Step] = []
    if dep.checkpoint_format == "qnemo":
        step = Step("export", f"copy the .qnemo TensorRT-LLM checkpoint as it is -> {checkpoint_dir}"
                    + (" [cached]" if cached else ""), dep.launcher_command("export"), where, cached)
    elif needs_quantization(dep):
        precision, hf = spec.precision, hf_source(dep)
        steps.append(export_step(dep, hf, "convert to a Hugging Face safetensors directory"))
        quantize = versions.facts(versions.ENGINE_FACTS)["quantize"]
        kv = kv_cache_quant(dep)  # absent = no KV quantization (quantize.py's choices: int8, fp8)
        command = ("python", quantize["script"], f"--model_dir={hf.directory}",
                   f"--dtype={export.dtype}", f"--qformat={QFORMATS.get(str(precision.quant_algo))}",
                   *([f"--kv_cache_dtype={kv}"] if kv else []),
                   f"--tp_size={spec.backend.tensor_parallel}", f"--pp_size={spec.backend.pipeline_parallel}",
                   f"--output_dir={checkpoint_dir}")
        step = Step("quantize", f"TensorRT-LLM {precision.name} calibration (needs a GPU; then copy the "
                    f"tokenizer into it) -> {checkpoint_dir}", command, "GPU host", cached)
    else:
        step = Step("export", f"write a TensorRT-LLM checkpoint ({export.dtype}, tp={spec.backend.tensor_parallel}"
                    f", pp={spec.backend.pipeline_parallel}) -> {checkpoint_dir}" + (" [cached]" if cached else "")
                    + kv_scale_warning(dep),
                    dep.launcher_command("export"), where, cached)
    build = Step("build", f"TensorRT-LLM {versions.trtllm_version(dep)} engine -> {engines}"
                 + (" [cached]" if engines.is_dir() else ""),
                 build_command(dep, checkpoint_dir, engines), "GPU host", engines.is_dir())
    fill = engine_parameters(dep, engines, checkpoint_dir)
    models = [
        TritonModel("trtllm/engine/ensemble", spec.model.served_name, fill),
        TritonModel("trtllm/engine/preprocessing", "preprocessing", fill),
        TritonModel("trtllm/engine/tensorrt_llm", ENGINE_MODEL, fill),
        TritonModel("trtllm/engine/postprocessing", "postprocessing", fill),
    ]
    if spec.backend.bls:
        models.append(TritonModel("trtllm/engine/tensorrt_llm_bls", "tensorrt_llm_bls", fill))
    return Plan(export, [*steps, step, build], models, placement=rank_placement(dep), lock=versions.lock(dep))


def engine_parameters(dep: Deployment, engines: Path, tokenizer_dir: Path) -> dict[str, str]:
    """A value for every placeholder of the v0.19.0 templates: spec keys first, then defaults."""
    backend, hw = dep.spec.backend, dep.spec.hardware
    dtype = serving_dtype(dep)
    from_spec = {
        "triton_max_batch_size": backend.max_batch_size,
        "decoupled_mode": backend.streaming,
        "max_queue_delay_microseconds": backend.max_queue_delay_us,
        "engine_dir": engines,
        "tokenizer_dir": tokenizer_dir,
        "max_beam_width": backend.max_beam_width,
        "batching_strategy": backend.batching_strategy.value,
        "batch_scheduler_policy": backend.batch_scheduler_policy.value,
        "kv_cache_free_gpu_mem_fraction": backend.kv_cache_memory_fraction,
        "exclude_input_in_output": backend.exclude_input_in_output,
        "enable_kv_cache_reuse": backend.enable_kv_cache_reuse,
        "enable_chunked_context": backend.enable_chunked_context,
        "cuda_graph_mode": backend.cuda_graphs,
        "encoder_input_features_data_type": TRITON_DTYPES.get(dtype if dtype in DTYPES else "float16"),
        "num_nodes": max(1, math.ceil(backend.world_size / max(hw.gpus_per_node, 1))),
        "preprocessing_instance_count": backend.instance_count,
        "postprocessing_instance_count": backend.instance_count,
        "bls_instance_count": backend.instance_count,
        "tensorrt_llm_model_name": ENGINE_MODEL,
    }
    return {key: param(value) for key, value in {**ENGINE_DEFAULTS, **backend.engine_parameters,
                                                  **from_spec}.items()}


# --------------------------------------------------------------------------------------------- export
def export(dep: Deployment, plan: Plan) -> bool:
    """The TensorRT-LLM checkpoint (a copy of the .qnemo, or converted); with a quantizing precision, the
    HF directory that calibration on a GPU reads. True on a cache hit."""
    if needs_quantization(dep):
        return export_hf(dep, hf_source(dep))
    from launcher import cache

    checkpoint, spec = dep.checkpoint, dep.spec
    assert checkpoint is not None  # validation requires local weights for export

    def produce(tmp: Path) -> None:
        out = tmp / "checkpoint"
        out.mkdir()
        if checkpoint.format == "qnemo":
            from launcher.checkpoints.qnemo import copy_files

            copy_files(checkpoint.path, out)
        else:
            from launcher.convert.trtllm_writer import to_trtllm

            to_trtllm(checkpoint, out, dtype=plan.export.dtype, tp=spec.backend.tensor_parallel,
                      pp=spec.backend.pipeline_parallel, quant_algo=checkpoint.quant_algo,
                      kv_cache=kv_cache_quant(dep) or "auto")
        if checkpoint.tokenizer is not None and not (out / "tokenizer_config.json").is_file():
            from launcher.convert import save_tokenizer

            save_tokenizer(checkpoint.tokenizer, out)

    return cache.fill(plan.export.directory, produce)


def server_ranks(dep: Deployment, command: ServerCommand) -> list[list[str]]:
    """Rank 0 loads the ensemble; the others only the C++ ``tensorrt_llm`` model."""
    return rank_commands(dep, command, ENGINE_MODEL)
