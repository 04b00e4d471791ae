"""Hugging Face directory: config.json + *.safetensors (or *.bin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.checkpoints.base import Checkpoint, TensorStream, load_torch_file, read_safetensors
from launcher.errors import user_error
from launcher.spec import ModelArch

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise user_error(str(path), f"cannot read JSON: {exc}", "fix or regenerate the file") from exc
    if not isinstance(data, dict):
        raise user_error(str(path), "expected a JSON object", "fix or regenerate the file")
    return data


def weight_files(path: Path) -> list[Path]:
    """The weight files, safetensors preferred over pickles (as transformers does)."""
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))


def is_hf(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    return "architectures" in read_json(path / "config.json") and bool(weight_files(path))


def check_architecture(architecture: str, where: str) -> str:
    """``architecture`` if this launcher can convert and serve it, else a one-line error naming ``where``."""
    if architecture not in LLAMA_FAMILY:
        raise user_error(where, f"architecture '{architecture}' is not supported",
                         f"supported: {', '.join(LLAMA_FAMILY)}")
    return architecture


def arch_from_config(config: dict, where: Path) -> ModelArch:
    """The architecture an HF ``config.json`` describes."""
    architecture = check_architecture((config.get("architectures") or ["?"])[0], str(where / "config.json"))
    heads = config["num_attention_heads"]
    rope_parameters = config.get("rope_parameters") or {}  # transformers >= 5 nests rope settings here
    rope_scaling = config.get("rope_scaling") or rope_parameters
    if rope_scaling.get("rope_type", "default") == "default":
        rope_scaling = None
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
        rope_theta=float(config.get("rope_theta") or rope_parameters.get("rope_theta") or 10000.0),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
    )


def quantization(path: Path, config: dict) -> dict[str, Any] | None:
    """A ModelOpt export's ``hf_quant_config.json`` block, else the config's ``quantization_config``."""
    modelopt = path / "hf_quant_config.json"
    if modelopt.is_file():
        return read_json(modelopt).get("quantization") or config.get("quantization_config")
    return config.get("quantization_config")


def _safetensors_tensors(files: list[Path]) -> TensorStream:
    for file in files:
        with open(file, "rb") as f:
            yield from read_safetensors(f, str(file))


def _pickle_tensors(files: list[Path]) -> TensorStream:
    for file in files:
        state = load_torch_file(file)
        yield from state.items()
        del state


def read(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise user_error(str(config_path), "missing", "a Hugging Face checkpoint needs config.json")
    config = read_json(config_path)
    files = weight_files(path)
    if not files:
        raise user_error(str(path), "no *.safetensors or *.bin weights", "point model.checkpoint at the weights")
    stream = _safetensors_tensors if files[0].suffix == ".safetensors" else _pickle_tensors
    return Checkpoint(
        path=path,
        format="hf",
        arch=arch_from_config(config, path),
        tokenizer=path,
        quantization=quantization(path, config),
        stream=lambda: stream(files),
    )
