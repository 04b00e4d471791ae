"""TensorRT-LLM backend, two runtimes chosen by ``backend.runtime``.

- ``llmapi`` (default, current TensorRT-LLM): one Python-backend model over ``tensorrt_llm.LLM``
  (``1/model.yaml`` holds the LLM arguments; the served directory is an HF checkpoint, pre-quantized
  by ModelOpt for fp8/int4_awq).
- ``engine`` (legacy C++ backend, and the only way to serve a ``.qnemo``): a TensorRT-LLM checkpoint
  in the export cache, a ``trtllm-build`` engine next to it, and the ``inflight_batcher_llm`` ensemble
  filled with every placeholder of tensorrtllm_backend v0.19.0's templates (shared/formats.md C.2).

Multi-GPU (tensor x pipeline parallel > 1) starts one ``tritonserver`` per rank under ``mpirun``, as
``launch_triton_server.py`` does (formats.md C.3); llmapi adds ``trtllm-llmapi-launch`` per rank.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from launcher.backends.base import (
    DTYPES,
    Export,
    Plan,
    Step,
    TritonModel,
    export_hf,
    export_step,
    hf_export,
    rank_placement,
    serving_dtype,
    tritonserver_args,
)
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.spec import BackendSpec, TrtllmRuntime

ENGINE_MODEL = "tensorrt_llm"  # the C++-backend model every rank above 0 loads
LAST_ENGINE_CONTAINER = (25, 12)  # newest Triton container tag (YY.MM) that still ships the C++ backend
MODELOPT_PTQ = "examples/llm_ptq/hf_ptq.py"  # in a NVIDIA/Model-Optimizer checkout
TRTLLM_QUANTIZE = "examples/quantization/quantize.py"  # in a NVIDIA/TensorRT-LLM checkout (legacy flow)
QFORMATS = {"FP8": "fp8", "W4A16_AWQ": "int4_awq", "W8A8_SQ_PER_CHANNEL": "int8_sq"}  # quant_algo -> qformat
HF_QUANT_METHODS = {"fp8": "FP8", "awq": "W4A16_AWQ"}  # HF quantization_config.quant_method -> quant_algo
TRITON_DTYPES = {"float32": "TYPE_FP32", "bfloat16": "TYPE_BF16", "float16": "TYPE_FP16"}

# Documented defaults of the inflight_batcher_llm placeholders that no spec key sets (tensorrtllm_backend
# docs/model_config.md); "" leaves a parameter unset, which the backend reads as "use the built-in default".
ENGINE_DEFAULTS: dict[str, str] = {
    "triton_backend": "tensorrtllm",  # the C++ backend ("python" selects the Python runtime)
    "max_queue_size": "0",  # fill_template.py's own default: unbounded queue
    "logits_datatype": "TYPE_FP32",
    "prompt_embedding_table_data_type": "TYPE_FP16",  # newer templates; v0.19.0 fixes TYPE_FP16
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
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    batching_strategy: BatchingStrategy = BatchingStrategy.inflight_fused_batching  # engine gpt_model_type
    batch_scheduler_policy: BatchSchedulerPolicy = BatchSchedulerPolicy.guaranteed_no_evict
    bls: bool = False  # engine: also render tensorrt_llm_bls (a Python BLS entry point beside the ensemble)
    trtllm_version: str = "0.17.0"  # TensorRT-LLM in the serving container; part of the engine cache key
    engine_parameters: dict[str, str] = field(default_factory=dict)  # overrides of ENGINE_DEFAULTS


# ------------------------------------------------------------------------------------------ helpers
def world_size(dep: Deployment) -> int:
    return dep.spec.backend.tensor_parallel * dep.spec.backend.pipeline_parallel


def checkpoint_quantization(dep: Deployment) -> tuple[str | None, str | None]:
    """``(quant_algo, kv_cache_quant_algo)`` the local checkpoint was quantized with, or ``(None, None)``.

    Reads a TensorRT-LLM ``quantization`` block, a ModelOpt ``hf_quant_config.json`` or an HF
    ``quantization_config`` (``quant_algo``, else ``quant_method``).
    """
    ckpt = dep.checkpoint
    if ckpt is None:
        return None, None
    found = dict(ckpt.quantization or {})
    modelopt = ckpt.path / "hf_quant_config.json" if ckpt.path.is_dir() else None
    if modelopt is not None and modelopt.is_file():
        from launcher.checkpoints.hf import read_json

        found = read_json(modelopt).get("quantization") or found
    algo = found.get("quant_algo") or HF_QUANT_METHODS.get(str(found.get("quant_method")))
    return (str(algo) if algo and algo != "NO_QUANT" else None), found.get("kv_cache_quant_algo")


def container_tag(tag: str) -> tuple[int, int] | None:
    """``"25.01"`` (optionally with a suffix) -> ``(25, 1)``; None if the tag is not a Triton release."""
    match = re.fullmatch(r"(\d{2})\.(\d{2})(?:[.-].*)?", tag)
    return (int(match[1]), int(match[2])) if match else None


def param(value: object) -> str:
    """A placeholder value as ``fill_template.py`` would write it (bools as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# --------------------------------------------------------------------------------------- the backend
class TrtllmBackend:
    name = "trtllm"
    spec_class = TrtllmBackendSpec

    # -- validation --------------------------------------------------------------------------------
    def problems(self, dep: Deployment) -> list[Problem]:
        spec, hw, backend = dep.spec, dep.spec.hardware, dep.spec.backend
        engine = backend.runtime == TrtllmRuntime.engine
        problems = []
        if hw.gpu is None:
            problems.append(Problem("hardware", "TensorRT-LLM needs an NVIDIA GPU; hardware=cpu has none",
                                    "pick a GPU hardware entry, e.g. hardware=h100x1"))
        elif hw.compute_capability < 7.0:
            problems.append(Problem("hardware", f"TensorRT-LLM needs compute capability >= 7.0 (Volta); "
                                    f"{hw.gpu} has {hw.compute_capability}", "pick a newer GPU"))
        if dep.checkpoint_format == "qnemo":
            problems += self._qnemo_problems(dep)
        problems += self._quantization_problems(dep)
        have = checkpoint_quantization(dep)[0]
        if engine and have not in (None, "FP8") and dep.checkpoint_format != "qnemo":
            problems.append(Problem("backend.runtime", f"the engine runtime converts 16-bit and FP8 checkpoints; "
                                    f"this one is quantized with {have}", "use backend.runtime=llmapi"))
        if engine and backend.max_num_tokens < spec.model.max_input_len and not backend.enable_chunked_context:
            problems.append(Problem("backend.max_num_tokens", f"{backend.max_num_tokens} is below "
                                    f"model.max_input_len={spec.model.max_input_len}: a prompt cannot fit one step",
                                    f"set backend.max_num_tokens>={spec.model.max_input_len} or "
                                    "backend.enable_chunked_context=true"))
        unknown = sorted(set(backend.engine_parameters) - set(ENGINE_DEFAULTS))
        if unknown:
            problems.append(Problem(f"backend.engine_parameters.{unknown[0]}", "is not a placeholder this "
                                    "launcher leaves to defaults (spec keys set the others)",
                                    f"use one of {', '.join(sorted(ENGINE_DEFAULTS))}"))
        tag = getattr(spec.target, "tag", None)
        if engine and tag is not None:
            release = container_tag(str(tag))
            if release is None or release > LAST_ENGINE_CONTAINER:
                newest = "{:02d}.{:02d}".format(*LAST_ENGINE_CONTAINER)
                problems.append(Problem("target.tag", f"'{tag}': the engine runtime needs a Triton container "
                                        f"that still ships the C++ tensorrtllm backend ({newest} or older)",
                                        f"set target.tag={newest} or older, or backend.runtime=llmapi"))
        return problems

    def _qnemo_problems(self, dep: Deployment) -> list[Problem]:
        backend = dep.spec.backend
        if backend.runtime != TrtllmRuntime.engine:
            return [Problem("backend.runtime", "a .qnemo is a TensorRT-LLM checkpoint: only the engine runtime "
                            "builds it", "set backend.runtime=engine")]
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

    def _quantization_problems(self, dep: Deployment) -> list[Problem]:
        precision = dep.spec.precision
        have, _ = checkpoint_quantization(dep)
        want = precision.quant_algo
        if have is None or want == have or precision.weights == "auto":
            return []
        if want is None:
            return [Problem("precision", f"the checkpoint is already quantized ({have}); precision="
                            f"{precision.name} would need its original weights",
                            "use precision=auto to serve it as it is")]
        return [Problem("precision", f"precision={precision.name} ({want}) but the checkpoint is quantized "
                        f"with {have}", "use precision=auto, or a checkpoint quantized the way you ask")]

    # -- plan --------------------------------------------------------------------------------------
    def plan(self, dep: Deployment) -> Plan:
        if dep.spec.backend.runtime == TrtllmRuntime.engine:
            return self._engine_plan(dep)
        return self._llmapi_plan(dep)

    def _needs_quantization(self, dep: Deployment) -> bool:
        """The precision asks for quantized weights that the checkpoint does not already carry."""
        return dep.spec.precision.quant_algo is not None and checkpoint_quantization(dep)[0] is None

    def _hf(self, dep: Deployment) -> Export:
        """The HF directory to serve or calibrate: a quantized HF checkpoint as it is, else ``hf_export``."""
        if dep.checkpoint_format == "hf" and checkpoint_quantization(dep)[0] is not None:
            return Export("hf", Path(str(dep.checkpoint_path)), None, serving_dtype(dep))
        return hf_export(dep)

    def _llmapi_plan(self, dep: Deployment) -> Plan:
        hf = self._hf(dep)
        steps = [export_step(dep, hf, "convert to a Hugging Face safetensors directory")]
        served = hf
        if self._needs_quantization(dep):
            served = self._modelopt_export(dep)
            steps.append(Step("quantize", f"ModelOpt {dep.spec.precision.name} calibration (needs a GPU) -> "
                              f"{served.directory} (skip when the checkpoint is already a ModelOpt HF export)",
                              self._modelopt_command(dep, hf.directory, served.directory), where="GPU host",
                              done=served.directory.is_dir()))
        model = TritonModel("trtllm/llmapi/tensorrt_llm", dep.spec.model.served_name,
                            {"model_yaml": self.model_yaml(dep, str(served.directory))})
        srun_ranks = world_size(dep) if dep.spec.target.name == "slurm" else 1  # see server_args
        return Plan(served, steps, [model], ranks=srun_ranks, placement=rank_placement(dep))

    def _modelopt_export(self, dep: Deployment) -> Export:
        precision = dep.spec.precision
        key = dep.cache_key("hf-modelopt", quant_algo=precision.quant_algo, kv_cache=precision.kv_cache)
        return Export("hf", dep.cache_root / key, key, serving_dtype(dep))

    def _modelopt_command(self, dep: Deployment, source: Path, output: Path) -> tuple[str, ...]:
        precision = dep.spec.precision
        return ("python", MODELOPT_PTQ, f"--pyt_ckpt_path={source}",
                f"--qformat={QFORMATS.get(str(precision.quant_algo), str(precision.quant_algo).lower())}",
                f"--kv_cache_qformat={precision.kv_cache if precision.kv_cache != 'auto' else 'none'}",
                f"--export_path={output}")

    def model_yaml(self, dep: Deployment, model_dir: str) -> dict[str, Any]:
        """``1/model.yaml``: ``tensorrt_llm.LLM`` arguments plus the ``triton_config`` our model.py reads."""
        spec, backend = dep.spec, dep.spec.backend
        kv_cache: dict[str, Any] = {"free_gpu_memory_fraction": backend.kv_cache_memory_fraction,
                                    "enable_block_reuse": backend.enable_kv_cache_reuse}
        if spec.precision.kv_cache != "auto":
            kv_cache["dtype"] = spec.precision.kv_cache
        return {
            "model": model_dir,
            "backend": "pytorch",
            "tensor_parallel_size": backend.tensor_parallel,
            "pipeline_parallel_size": backend.pipeline_parallel,
            "gpus_per_node": spec.hardware.gpus_per_node,
            "max_batch_size": backend.max_batch_size,
            "max_seq_len": spec.model.max_input_len + spec.model.max_output_len,
            "max_num_tokens": backend.max_num_tokens,
            "enable_chunked_prefill": backend.enable_chunked_context,
            "kv_cache_config": kv_cache,
            "triton_config": {"max_batch_size": 0, "decoupled": backend.streaming,
                              "cancellation_check_period_ms": int(ENGINE_DEFAULTS["cancellation_check_period_ms"])},
        }

    def engine_export(self, dep: Deployment) -> Export:
        """The cache entry the engine runtime serves from: ``checkpoint/`` (TensorRT-LLM checkpoint +
        tokenizer) and ``engines/<build key>/``; one directory, so a container mounts it once."""
        spec = dep.spec
        dtype = serving_dtype(dep)
        key = dep.cache_key("trtllm", dtype=dtype, tp=spec.backend.tensor_parallel,
                            pp=spec.backend.pipeline_parallel, quant_algo=spec.precision.quant_algo,
                            kv_cache=spec.precision.kv_cache)
        return Export("trtllm_checkpoint", dep.cache_root / key, key, dtype)

    def build_command(self, dep: Deployment, checkpoint_dir: Path, engine_dir: Path) -> tuple[str, ...]:
        """The exact ``trtllm-build`` for the spec's limits (fp8: FP8 context FMHA; the checkpoint's
        ``kv_cache_quant_algo`` carries the FP8 KV cache)."""
        spec, backend = dep.spec, dep.spec.backend
        fp8 = spec.precision.activations == "fp8" or checkpoint_quantization(dep)[0] == "FP8"
        paged_context = fp8 or backend.enable_chunked_context or backend.enable_kv_cache_reuse
        command = [
            "trtllm-build", f"--checkpoint_dir={checkpoint_dir}", f"--output_dir={engine_dir}",
            "--gemm_plugin=auto", f"--max_batch_size={backend.max_batch_size}",
            f"--max_input_len={spec.model.max_input_len}",
            f"--max_seq_len={spec.model.max_input_len + spec.model.max_output_len}",
            f"--max_num_tokens={backend.max_num_tokens}", f"--max_beam_width={backend.max_beam_width}",
            "--kv_cache_type=paged", f"--workers={world_size(dep)}",
            # recorded in the engine; each rank then runs on GPU rank % gpus_per_node of its node
            f"--gpus_per_node={dep.spec.hardware.gpus_per_node}",
        ]
        if paged_context:
            command.append("--use_paged_context_fmha=enable")
        if fp8:
            command.append("--use_fp8_context_fmha=enable")
        return tuple(command)

    def engine_dir(self, dep: Deployment, export: Export) -> Path:
        """Engines keyed by checkpoint (the entry's key) + build settings + TensorRT-LLM version."""
        build = self.build_command(dep, Path("ckpt"), Path("engine"))
        key = dep.cache_key("engine", checkpoint=export.key, build=build, trtllm=dep.spec.backend.trtllm_version)
        return export.directory / "engines" / key.rsplit("-", 1)[-1]

    def _engine_plan(self, dep: Deployment) -> Plan:
        spec = dep.spec
        export = self.engine_export(dep)
        checkpoint_dir = export.directory / "checkpoint"
        engine_dir = self.engine_dir(dep, export)
        cached = checkpoint_dir.is_dir()
        where = "here" if dep.checkpoint is not None else "target host"
        steps: list[Step] = []
        if dep.checkpoint_format == "qnemo":
            step = Step("export", f"copy the .qnemo TensorRT-LLM checkpoint as it is -> {checkpoint_dir}"
                        + (" [cached]" if cached else ""), dep.launcher_command("export"), where, cached)
        elif self._needs_quantization(dep):
            precision, hf = spec.precision, self._hf(dep)
            steps.append(export_step(dep, hf, "convert to a Hugging Face safetensors directory"))
            command = ("python", TRTLLM_QUANTIZE, f"--model_dir={hf.directory}",
                       f"--dtype={export.dtype}", f"--qformat={QFORMATS.get(str(precision.quant_algo))}",
                       f"--kv_cache_dtype={precision.kv_cache if precision.kv_cache != 'auto' else 'none'}",
                       f"--tp_size={spec.backend.tensor_parallel}", f"--pp_size={spec.backend.pipeline_parallel}",
                       f"--output_dir={checkpoint_dir}")
            step = Step("quantize", f"TensorRT-LLM {precision.name} calibration (needs a GPU; then copy the "
                        f"tokenizer into it) -> {checkpoint_dir}", command, "GPU host", cached)
        else:
            step = Step("export", f"write a TensorRT-LLM checkpoint ({export.dtype}, tp={spec.backend.tensor_parallel}"
                        f", pp={spec.backend.pipeline_parallel}) -> {checkpoint_dir}" + (" [cached]" if cached else ""),
                        dep.launcher_command("export"), where, cached)
        build = Step("build", f"TensorRT-LLM {spec.backend.trtllm_version} engine -> {engine_dir}"
                     + (" [cached]" if engine_dir.is_dir() else ""),
                     self.build_command(dep, checkpoint_dir, engine_dir), "GPU host", engine_dir.is_dir())
        fill = self.engine_parameters(dep, engine_dir, checkpoint_dir)
        models = [
            TritonModel("trtllm/engine/ensemble", spec.model.served_name, fill),
            TritonModel("trtllm/engine/preprocessing", "preprocessing", fill),
            TritonModel("trtllm/engine/tensorrt_llm", ENGINE_MODEL, fill),
            TritonModel("trtllm/engine/postprocessing", "postprocessing", fill),
        ]
        if spec.backend.bls:
            models.append(TritonModel("trtllm/engine/tensorrt_llm_bls", "tensorrt_llm_bls", fill))
        return Plan(export, [*steps, step, build], models, placement=rank_placement(dep))

    def engine_parameters(self, dep: Deployment, engine_dir: Path, tokenizer_dir: Path) -> dict[str, str]:
        """A value for every placeholder of the v0.19.0 templates: spec keys first, then defaults."""
        backend, hw = dep.spec.backend, dep.spec.hardware
        dtype = serving_dtype(dep)
        from_spec = {
            "triton_max_batch_size": backend.max_batch_size,
            "decoupled_mode": backend.streaming,
            "max_queue_delay_microseconds": backend.max_queue_delay_us,
            "engine_dir": engine_dir,
            "tokenizer_dir": tokenizer_dir,
            "max_beam_width": backend.max_beam_width,
            "batching_strategy": backend.batching_strategy.value,
            "batch_scheduler_policy": backend.batch_scheduler_policy.value,
            "kv_cache_free_gpu_mem_fraction": backend.kv_cache_memory_fraction,
            "exclude_input_in_output": backend.exclude_input_in_output,
            "enable_kv_cache_reuse": backend.enable_kv_cache_reuse,
            "enable_chunked_context": backend.enable_chunked_context,
            "encoder_input_features_data_type": TRITON_DTYPES.get(dtype if dtype in DTYPES else "float16"),
            "num_nodes": max(1, math.ceil(world_size(dep) / max(hw.gpus_per_node, 1))),
            "preprocessing_instance_count": backend.instance_count,
            "postprocessing_instance_count": backend.instance_count,
            "bls_instance_count": backend.instance_count,
            "tensorrt_llm_model_name": ENGINE_MODEL,
        }
        return {key: param(value) for key, value in {**ENGINE_DEFAULTS, **backend.engine_parameters,
                                                      **from_spec}.items()}

    # -- export ------------------------------------------------------------------------------------
    def export(self, dep: Deployment, plan: Plan) -> None:
        if dep.spec.backend.runtime == TrtllmRuntime.llmapi or self._needs_quantization(dep):
            export_hf(dep, self._hf(dep))  # what the server loads, or what calibration on a GPU reads
            return
        from launcher import cache

        checkpoint, spec = dep.checkpoint, dep.spec
        assert checkpoint is not None  # validation requires local weights for export

        def produce(tmp: Path) -> None:
            out = tmp / "checkpoint"
            out.mkdir()
            if checkpoint.format == "qnemo":
                copy_qnemo(checkpoint.path, out)
            else:
                from launcher.convert.trtllm_writer import to_trtllm

                to_trtllm(checkpoint, out, dtype=plan.export.dtype, tp=spec.backend.tensor_parallel,
                          pp=spec.backend.pipeline_parallel, quant_algo=checkpoint_quantization(dep)[0],
                          kv_cache=spec.precision.kv_cache)
            if checkpoint.tokenizer is not None and not (out / "tokenizer_config.json").is_file():
                from launcher.convert import save_tokenizer

                save_tokenizer(checkpoint.tokenizer, out)

        cache.fill(plan.export.directory, produce)

    # -- launch ------------------------------------------------------------------------------------
    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        """None: both runtimes run in NVIDIA's TensorRT-LLM container, which brings its backends."""
        return {}

    def server_args(self, dep: Deployment, tritonserver: str, repository: str) -> list[str]:
        """One ``tritonserver``; for several ranks the ``mpirun`` line of ``launch_triton_server.py``
        (one segment per rank; rank 0 loads every model, the others only the TensorRT-LLM model, each
        with its own Python-backend shared-memory prefix). llmapi wraps each rank in
        ``trtllm-llmapi-launch``; on Slurm the job's ``srun`` starts the ranks instead of ``mpirun``."""
        single = tritonserver_args(dep, tritonserver, repository)
        world = world_size(dep)
        if world == 1:
            return single
        llmapi = dep.spec.backend.runtime == TrtllmRuntime.llmapi
        if llmapi and dep.spec.target.name == "slurm":
            return ["trtllm-llmapi-launch", *single]
        rank_model = dep.spec.model.served_name if llmapi else ENGINE_MODEL
        command = ["mpirun", "--allow-run-as-root"]
        for rank in range(world):
            if rank:
                command.append(":")
            command += ["-n", "1", *(["trtllm-llmapi-launch"] if llmapi else []), *single]
            if rank:
                command += ["--model-control-mode=explicit", f"--load-model={rank_model}"]
            command += ["--disable-auto-complete-config",
                        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"]
        return command


def copy_qnemo(path: Path, out_dir: Path) -> None:
    """The .qnemo's files as they are (a tar's members are checked for safety before anything is read)."""
    import shutil

    from launcher.checkpoints.archive import Archive

    archive = Archive(path)
    for name in archive.names():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 16 * 1024 * 1024)


BACKEND = TrtllmBackend()
