#!/usr/bin/env python3
"""Write the reference ``inflight_batcher_llm`` configs the engine templates are tested against.

Reads tensorrtllm_backend's ``all_models/inflight_batcher_llm/<model>/config.pbtxt`` at a tag from a git
directory (e.g. the search tool's ``fetch`` of triton-inference-server/tensorrtllm_backend), fills every
placeholder the way ``tools/fill_template.py`` does (``string.Template.safe_substitute`` over a dict that
starts as ``{"max_queue_size": 0, "max_queue_delay_microseconds": 0}``) with the values in ``FILL``, parses
each result with Triton's ``ModelConfig`` protobuf schema and writes them as JSON (``MessageToDict``), with
the tag and commit they came from and the fill used, to ``tests/backends/trtllm/upstream/``.

    python scripts/engine_reference.py /work/.mirror/triton-inference-server+tensorrtllm_backend/repo v0.19.0
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from pathlib import Path

MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls")
OUT = Path(__file__).resolve().parent.parent / "tests" / "backends" / "trtllm" / "upstream"
# One value per placeholder, as llm-launch's plan writes them (engine.engine_parameters); tests render
# llm-launch's templates with the same values and compare.
FILL = {
    "triton_max_batch_size": "64", "decoupled_mode": "true", "max_queue_delay_microseconds": "2000",
    "max_queue_size": "0", "engine_dir": "/cache/trtllm/engines/abc", "tokenizer_dir": "/cache/trtllm/checkpoint",
    "max_beam_width": "1", "batching_strategy": "inflight_fused_batching",
    "batch_scheduler_policy": "guaranteed_no_evict", "kv_cache_free_gpu_mem_fraction": "0.9",
    "exclude_input_in_output": "true", "enable_kv_cache_reuse": "true", "enable_chunked_context": "false",
    "encoder_input_features_data_type": "TYPE_BF16", "logits_datatype": "TYPE_FP32", "num_nodes": "1",
    "preprocessing_instance_count": "1", "postprocessing_instance_count": "1", "bls_instance_count": "1",
    "tensorrt_llm_model_name": "tensorrt_llm", "triton_backend": "tensorrtllm", "encoder_engine_dir": "",
    "max_tokens_in_paged_kv_cache": "", "max_attention_window_size": "", "sink_token_length": "",
    "cross_kv_cache_fraction": "", "kv_cache_host_memory_bytes": "0", "kv_cache_onboard_blocks": "true",
    "enable_trt_overlap": "false", "cancellation_check_period_ms": "100", "stats_check_period_ms": "100",
    "iter_stats_max_iterations": "1000", "request_stats_max_iterations": "0", "normalize_log_probs": "true",
    "gpu_device_ids": "", "participant_ids": "", "lora_cache_optimal_adapter_size": "8",
    "lora_cache_max_adapter_size": "64", "lora_cache_gpu_memory_fraction": "0.05",
    "lora_cache_host_memory_bytes": "1073741824", "lora_prefetch_dir": "", "decoding_mode": "",
    "lookahead_window_size": "", "lookahead_ngram_size": "", "lookahead_verification_set_size": "",
    "medusa_choices": "", "eagle_choices": "", "gpu_weights_percent": "1.0", "enable_context_fmha_fp32_acc": "false",
    "multi_block_mode": "true", "cuda_graph_mode": "false", "cuda_graph_cache_size": "0",
    "speculative_decoding_fast_logits": "false", "guided_decoding_backend": "", "xgrammar_tokenizer_info_path": "",
    "add_special_tokens": "true", "multimodal_model_path": "", "max_num_images": "", "skip_special_tokens": "true",
    "accumulate_tokens": "false", "tensorrt_llm_draft_model_name": "", "multimodal_encoders_name": "",
}


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout


def reference(git_dir: str, tag: str) -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    commit = git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip()
    models, placeholders = {}, {}
    for model in MODELS:
        text = git(git_dir, "show", f"{tag}:all_models/inflight_batcher_llm/{model}/config.pbtxt")
        used = sorted(set(re.findall(r"\$\{(\w+)\}", text)))
        missing = [name for name in used if name not in FILL]
        if missing:
            raise SystemExit(f"{model}: no value in FILL for {missing}")
        filled = string.Template(text).safe_substitute({"max_queue_size": 0, "max_queue_delay_microseconds": 0,
                                                        **{k: FILL[k] for k in used}})
        config = text_format.Parse(filled, model_config_pb2.ModelConfig())
        models[model] = json_format.MessageToDict(config, preserving_proto_field_name=True)
        placeholders[model] = used
    return {"source": {"repo": "triton-inference-server/tensorrtllm_backend", "tag": tag, "commit": commit,
                       "files": "all_models/inflight_batcher_llm/<model>/config.pbtxt",
                       "filled_as": "tools/fill_template.py (string.Template.safe_substitute)"},
            "fill": FILL, "placeholders": placeholders, "models": models}


def main() -> None:
    git_dir, tag = sys.argv[1], sys.argv[2]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"inflight_batcher_llm-{tag}.json"
    path.write_text(json.dumps(reference(git_dir, tag), indent=1, sort_keys=True) + "\n")
    print(path)


if __name__ == "__main__":
    main()
