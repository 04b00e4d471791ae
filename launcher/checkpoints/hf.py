"""Hugging Face directory: config.json + *.safetensors (or *.bin)."""

from __future__ import annotations

import functools
import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher.checkpoints.base import (
    FLOAT_DTYPES,
    SAFETENSORS_NAMES,
    SMALL_FILE_LIMIT,
    Checkpoint,
    Fields,
    SafetensorsEntry,
    TensorStream,
    check_arch,
    count_parameters,
    load_torch_file,
    read_safetensors,
    reading,
    safetensors_index,
    shown,
    torch_file_index,
)
from launcher.errors import user_error
from launcher.spec import ModelArch


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


# config.json keys converters need beyond ModelArch's own fields (family_config), by their HF names: numbers
FAMILY_NUMBERS = ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "rope_local_base_freq",
                  "embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")
FAMILY_FLAGS = ("norm_topk_prob",)
SLIDING_PATTERNS = {"gemma2": 2}  # every n-th layer is global where the config has no layer_types (transformers 4)


def _architecture(config: Fields) -> str:
    architectures = config.data.get("architectures")
    if not isinstance(architectures, list) or not architectures or not all(isinstance(a, str) for a in architectures):
        raise config.error("architectures", f"is {shown(architectures)}; expected a list of class names")
    return architectures[0]


def _rope(config: Fields) -> tuple[float, dict[str, Any] | None, float | None]:
    """``rope_theta``, the rope scaling (None: plain RoPE) and Gemma 3's local base, from the keys of either
    transformers generation: ``rope_theta``/``rope_scaling``, or ``rope_parameters`` (>= 5), which Gemma 3 nests
    per layer type."""
    parameters = config.child("rope_parameters")
    local = None
    if "full_attention" in parameters.data:
        local = parameters.child("sliding_attention").float("rope_theta", 10000.0)
        parameters = parameters.child("full_attention")
    theta = (config if "rope_theta" in config.data else parameters).float("rope_theta", 10000.0)
    scaling = config.mapping("rope_scaling") or parameters.data
    if scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return theta, scaling, local


def _layer_types(config: Fields) -> list[str] | None:
    """Each layer's attention kind: ``layer_types``, else from a sliding-window pattern (every n-th layer global)."""
    if (types := config.strings("layer_types")) is not None:
        return None if set(types) == {"full_attention"} else types  # all full: as if none were given
    layers = config.int(config.key("num_hidden_layers", "n_layer", "num_layers"))
    pattern = config.int(config.key("_sliding_window_pattern", "sliding_window_pattern"),
                         SLIDING_PATTERNS.get(str(config.data.get("model_type")), 0), minimum=0)
    if not pattern or config.data.get("sliding_window") is None:
        return None
    return ["sliding_attention" if (layer + 1) % pattern else "full_attention" for layer in range(layers)]


def arch_from_config(config: Fields) -> ModelArch:
    """The architecture an HF ``config.json`` describes, whatever the family (a multimodal model's
    ``text_config`` holds the decoder's sizes). Keys with older spellings (GPT-2's ``n_layer`` ...) count too."""
    architecture = _architecture(config)
    if "num_hidden_layers" not in config.data and isinstance(config.data.get("text_config"), dict):
        config = config.child("text_config")
    heads = config.int(config.key("num_attention_heads", "n_head"))
    hidden = config.int(config.key("hidden_size", "n_embd", "d_model"))
    theta, scaling, local_theta = _rope(config)
    experts = config.int(config.key("num_experts", "n_routed_experts", "num_local_experts"), 0, minimum=0)
    sliding = config.data.get("use_sliding_window") is not False
    family_config: dict[str, Any] = {key: config.float(key) for key in FAMILY_NUMBERS if key in config.data
                                     and config.data[key] is not None}
    family_config = {key: int(value) if isinstance(config.data[key], int) else value  # keep the file's ints
                     for key, value in family_config.items()}
    family_config |= {key: config.bool(key) for key in FAMILY_FLAGS if config.data.get(key) is not None}
    if local_theta is not None:
        family_config.setdefault("rope_local_base_freq", local_theta)
    shared_experts = config.int("n_shared_experts", 0, minimum=0)
    expert_size = config.int("moe_intermediate_size", None)
    return check_arch(ModelArch(
        architecture=architecture,
        num_layers=config.int(config.key("num_hidden_layers", "n_layer", "num_layers")),
        hidden_size=hidden,
        intermediate_size=config.int(config.key("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden),
        num_attention_heads=heads,
        num_kv_heads=config.int("num_key_value_heads", heads),
        head_dim=config.int("head_dim", max(hidden // heads, 1)),
        vocab_size=config.int("vocab_size"),
        max_position_embeddings=config.int(config.key("max_position_embeddings", "n_positions"), 4096),
        rope_theta=theta,
        rms_norm_eps=config.float(config.key("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps"), 1e-5),
        tie_word_embeddings=config.bool("tie_word_embeddings", False),
        rope_scaling=scaling,
        dtype=config.str(config.key("torch_dtype", "dtype"), "float32"),
        num_experts=experts,
        experts_per_token=config.int(config.key("num_experts_per_tok", "moe_top_k"), 0, minimum=0) if experts else 0,
        expert_intermediate_size=expert_size,
        shared_expert_intermediate_size=config.int("shared_expert_intermediate_size",
                                                   shared_experts * (expert_size or 0), minimum=0),
        sliding_window=config.int("sliding_window", None) if sliding else None,
        layer_types=_layer_types(config),
        kv_lora_rank=config.int("kv_lora_rank", None),
        qk_rope_head_dim=config.int("qk_rope_head_dim", 0, minimum=0),
        family_config=family_config or None,
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


def stored_dtype(entries: list[SafetensorsEntry], declared: str) -> str:
    """The floating dtype holding most of the weights' bytes (what the files store, whatever config.json says)."""
    by_dtype: dict[str, int] = {}
    for entry in entries:
        name = SAFETENSORS_NAMES[entry.dtype]
        if name in FLOAT_DTYPES:
            by_dtype[name] = by_dtype.get(name, 0) + entry.end - entry.start
    return max(by_dtype, key=by_dtype.__getitem__) if by_dtype else declared


def read(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise user_error(str(config_path), "missing", "a Hugging Face checkpoint needs config.json")
    config = Fields(read_json(config_path), str(config_path))
    files = weight_files(path)
    if not files:
        raise user_error(str(path), "no *.safetensors or *.bin weights", "point model.checkpoint at the weights")
    arch = arch_from_config(config)
    indexes: dict[Path, list[SafetensorsEntry]] = {}
    if files[0].suffix == ".safetensors":
        for file in files:  # only the headers: checked now, so a lying one fails at plan, not mid-export
            with reading(file, "safetensors weights"), open(file, "rb") as f:
                indexes[file] = safetensors_index(f, str(file))
        entries = [entry for file_entries in indexes.values() for entry in file_entries]
        arch = replace(arch, parameters=count_parameters((e.name, e.shape, e.dtype) for e in entries) or None,
                       dtype=stored_dtype(entries, arch.dtype))
        stream = functools.partial(_safetensors_tensors, indexes)
    else:
        shapes = []
        for file in files:  # a zip-format pickle is checked now (only its pickle is read); a legacy one at export
            if zipfile.is_zipfile(file):
                with open(file, "rb") as f:
                    index = torch_file_index(f, str(file))
                shapes += [(str(name), tuple(t.shape), "") for name, t in index.items() if hasattr(t, "shape")]
        arch = replace(arch, parameters=count_parameters(shapes) or None)
        stream = functools.partial(_pickle_tensors, files)
    return Checkpoint(
        path=path,
        format="hf",
        arch=arch,
        tokenizer=path,
        quantization=quantization(path, config),
        stream=stream,
        safetensors=indexes or None,
    )
