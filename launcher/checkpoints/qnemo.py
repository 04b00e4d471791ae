"""``.qnemo``: a TensorRT-LLM checkpoint (``config.json`` + ``rank*.safetensors``) plus a tokenizer, tar or dir.

Its tensors keep their TensorRT-LLM names (``transformer.layers.0.attention.qkv.weight``): only the
``trtllm`` engine runtime serves it. ``tensors()`` yields rank 0's tensors, then rank 1's, and so on;
``Checkpoint.mapping`` says how they are split (``tp_size``, ``pp_size``, ``world_size``).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from launcher.checkpoints.archive import Archive
from launcher.checkpoints.base import (
    Checkpoint,
    Fields,
    SafetensorsEntry,
    TensorStream,
    check_arch,
    count_parameters,
    read_safetensors,
    reading,
    safetensors_index,
)
from launcher.errors import user_error
from launcher.spec import ModelArch

_RANK = re.compile(r"rank(\d+)\.safetensors")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def looks_like_qnemo(names: set[str] | list[str]) -> bool:
    return "config.json" in names and "rank0.safetensors" in names


def is_qnemo_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / "rank0.safetensors").is_file() and (path / "config.json").is_file()):
        return False
    from launcher.checkpoints.hf import read_json

    return "architecture" in read_json(path / "config.json")


def arch_from_config(config: Fields) -> ModelArch:
    """The architecture of a TensorRT-LLM ``config.json`` (singular ``architecture``, any family the engine
    runtime builds; a ``moe`` block for experts, as ModelOpt writes Mixtral)."""
    heads, hidden = config.int("num_attention_heads"), config.int("hidden_size")
    rotary_scaling = config.mapping("rotary_scaling")
    moe = config.child("moe")
    experts = moe.int("num_experts", 0, minimum=0)
    return check_arch(ModelArch(
        architecture=config.str("architecture"),
        num_layers=config.int("num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=config.int("intermediate_size", 4 * hidden),
        num_attention_heads=heads,
        num_kv_heads=config.int("num_key_value_heads", heads),
        head_dim=config.int("head_size", max(hidden // heads, 1)),
        vocab_size=config.int("vocab_size"),
        max_position_embeddings=config.int("max_position_embeddings", 4096),
        rope_theta=config.float("rotary_base", 10000.0),
        rms_norm_eps=config.float("norm_epsilon", 1e-5),
        tie_word_embeddings=config.bool(config.key("share_embedding_table", "tie_word_embeddings"), False),
        rope_scaling=rotary_scaling,
        dtype=config.str("dtype"),
        num_experts=experts,
        experts_per_token=moe.int("top_k", 0, minimum=0) if experts else 0,
    ), config.where)


def _mapping(config: Fields) -> dict[str, int] | None:
    """The TensorRT-LLM split (``world_size``, ``tp_size``, ``pp_size`` ...): a mapping of positive integers."""
    mapping = config.child("mapping")
    return {key: mapping.int(key) for key in mapping.data} or None


def _ranks(archive: Archive) -> list[str]:
    ranks = sorted((int(m[1]), name) for name in archive.names() if (m := _RANK.fullmatch(name)))
    return [name for _, name in ranks]


def _indexes(archive: Archive) -> dict[str, list[SafetensorsEntry]]:
    """Each rank file's checked safetensors header (only the headers are read)."""
    indexes = {}
    for name in _ranks(archive):
        with archive.open(name) as f:
            indexes[name] = safetensors_index(f, f"{archive.path}:{name}")
    return indexes


def _tensors(archive: Archive, indexes: dict[str, list[SafetensorsEntry]]) -> TensorStream:
    for name, entries in indexes.items():
        with archive.open(name) as f:
            yield from read_safetensors(f, f"{archive.path}:{name}", entries)


def read(path: Path) -> Checkpoint:
    archive = Archive(path)
    if not looks_like_qnemo(archive.names()):
        raise user_error(str(path), "no config.json + rank0.safetensors inside", "is this a .qnemo checkpoint?")
    with reading(f"{path}:config.json", "JSON"):
        config = Fields(json.loads(archive.read_small("config.json", "config")), f"{path}:config.json")
    tokenizer_files = [n for n in _TOKENIZER_FILES if archive.has(n)]
    arch = arch_from_config(config)
    indexes = None if archive.compressed else _indexes(archive)  # gzip: no random access until export
    mapping = _mapping(config)
    if indexes and (mapping or {}).get("world_size", 1) == 1:  # split ranks repeat their replicated tensors
        arch = replace(arch, parameters=count_parameters(
            (e.name, e.shape, e.dtype) for entries in indexes.values() for e in entries) or None)
    return Checkpoint(
        path=path,
        format="qnemo",
        arch=arch,
        tokenizer=archive.local(*tokenizer_files) if tokenizer_files else None,
        quantization=config.mapping("quantization"),
        mapping=mapping,
        stream=lambda: _tensors(archive, indexes if indexes is not None else _indexes(archive)),
    )


def copy_files(path: Path, out_dir: Path) -> None:
    """The .qnemo's files as they are (a tar's members are checked for safety before anything is read)."""
    import shutil

    archive = Archive(path)
    for name in archive.names():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 16 * 1024 * 1024)
