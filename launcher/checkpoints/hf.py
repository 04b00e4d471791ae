"""Hugging Face directory: config.json + *.safetensors (or *.bin)."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path
from typing import Any

from launcher.checkpoints.base import (
    SMALL_FILE_LIMIT,
    Checkpoint,
    Fields,
    SafetensorsEntry,
    TensorStream,
    check_arch,
    load_torch_file,
    read_safetensors,
    reading,
    safetensors_index,
    shown,
    torch_file_index,
)
from launcher.errors import user_error
from launcher.spec import ModelArch

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error naming the file."""
    with reading(path, "JSON"):
        if (size := path.stat().st_size) > SMALL_FILE_LIMIT:
            raise ValueError(f"it is {size} bytes, more than any config file has")
        data = json.loads(path.read_bytes())
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
        raise user_error(where, f"architecture '{shown(architecture)}' is not supported",
                         f"supported: {', '.join(LLAMA_FAMILY)}")
    return architecture


def arch_from_config(config: Fields) -> ModelArch:
    """The architecture an HF ``config.json`` describes."""
    architectures = config.data.get("architectures") or ["?"]
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise config.error("architectures", f"is {shown(architectures)}; expected a list of class names")
    architecture = check_architecture(architectures[0], config.where)
    heads, hidden = config.int("num_attention_heads"), config.int("hidden_size")
    rope_parameters = config.child("rope_parameters")  # transformers >= 5 nests rope settings here
    rope_scaling = config.mapping("rope_scaling") or rope_parameters.data
    if rope_scaling.get("rope_type", "default") == "default":
        rope_scaling = None
    return check_arch(ModelArch(
        architecture=architecture,
        num_layers=config.int("num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=config.int("intermediate_size"),
        num_attention_heads=heads,
        num_kv_heads=config.int("num_key_value_heads", heads),
        head_dim=config.int("head_dim", max(hidden // heads, 1)),
        vocab_size=config.int("vocab_size"),
        max_position_embeddings=config.int("max_position_embeddings", 4096),
        rope_theta=(config if "rope_theta" in config.data else rope_parameters).float("rope_theta", 10000.0),
        rms_norm_eps=config.float("rms_norm_eps", 1e-5),
        tie_word_embeddings=config.bool("tie_word_embeddings", False),
        rope_scaling=rope_scaling,
        dtype=config.str(config.key("torch_dtype", "dtype"), "float32"),
    ), config.where)


def quantization(path: Path, config: Fields) -> dict[str, Any] | None:
    """A ModelOpt export's ``hf_quant_config.json`` block, else the config's ``quantization_config``."""
    modelopt = path / "hf_quant_config.json"
    if modelopt.is_file():
        return Fields(read_json(modelopt), str(modelopt)).mapping("quantization") or config.mapping(
            "quantization_config")
    return config.mapping("quantization_config")


def _safetensors_tensors(indexes: dict[Path, list[SafetensorsEntry]]) -> TensorStream:
    for file, entries in indexes.items():
        with open(file, "rb") as f:
            yield from read_safetensors(f, str(file), entries)


def _pickle_tensors(files: list[Path]) -> TensorStream:
    for file in files:
        state = load_torch_file(file)
        yield from state.items()
        del state


def read(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise user_error(str(config_path), "missing", "a Hugging Face checkpoint needs config.json")
    config = Fields(read_json(config_path), str(config_path))
    files = weight_files(path)
    if not files:
        raise user_error(str(path), "no *.safetensors or *.bin weights", "point model.checkpoint at the weights")
    arch = arch_from_config(config)
    if files[0].suffix == ".safetensors":
        indexes = {}
        for file in files:  # only the headers: checked now, so a lying one fails at plan, not mid-export
            with reading(file, "safetensors weights"), open(file, "rb") as f:
                indexes[file] = safetensors_index(f, str(file))
        stream = functools.partial(_safetensors_tensors, indexes)
    else:
        for file in files:  # a zip-format pickle is checked now (only its pickle is read); a legacy one at export
            if zipfile.is_zipfile(file):
                with open(file, "rb") as f:
                    torch_file_index(f, str(file))
        stream = functools.partial(_pickle_tensors, files)
    return Checkpoint(
        path=path,
        format="hf",
        arch=arch,
        tokenizer=path,
        quantization=quantization(path, config),
        stream=stream,
    )
