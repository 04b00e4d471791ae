"""Hugging Face directory: config.json + *.safetensors (or *.bin)."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.checkpoints.base import Checkpoint
from launcher.errors import user_error
from launcher.spec import ModelArch

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM")


def is_hf(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    config = json.loads((path / "config.json").read_text())
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return "architectures" in config and has_weights


def arch_from_config(config: dict, where: Path) -> ModelArch:
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in LLAMA_FAMILY:
        raise user_error(
            str(where / "config.json"),
            f"architecture '{architecture}' is not supported",
            f"supported: {', '.join(LLAMA_FAMILY)}",
        )
    heads = config["num_attention_heads"]
    return ModelArch(
        architecture=architecture,
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=config.get("rope_scaling"),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
    )


def read(path: Path) -> Checkpoint:
    config = json.loads((path / "config.json").read_text())
    return Checkpoint(
        path=path,
        format="hf",
        arch=arch_from_config(config, path),
        tokenizer=path,
        quantization=config.get("quantization_config"),
    )
