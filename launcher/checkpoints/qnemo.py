"""``.qnemo``: a TensorRT-LLM checkpoint (``config.json`` + ``rank*.safetensors``) plus a tokenizer, tar or dir.

Its tensors keep their TensorRT-LLM names (``transformer.layers.0.attention.qkv.weight``): only the
``trtllm`` engine runtime serves it. ``tensors()`` yields rank 0's tensors, then rank 1's, and so on;
``Checkpoint.mapping`` says how they are split (``tp_size``, ``pp_size``, ``world_size``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from launcher.checkpoints.archive import Archive
from launcher.checkpoints.base import Checkpoint, TensorStream, read_safetensors, reading
from launcher.checkpoints.hf import check_architecture
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


def arch_from_config(config: dict[str, Any], where: str) -> ModelArch:
    """The architecture of a TensorRT-LLM ``config.json`` (singular ``architecture``)."""
    architecture = check_architecture(str(config.get("architecture")), f"{where}: architecture")
    try:
        heads = config["num_attention_heads"]
        return ModelArch(
            architecture=architecture,
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            intermediate_size=config.get("intermediate_size") or 4 * config["hidden_size"],
            num_attention_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_size") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            max_position_embeddings=config.get("max_position_embeddings") or 4096,
            rope_theta=float(config.get("rotary_base", 10000.0)),
            rms_norm_eps=float(config.get("norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(config.get("share_embedding_table", config.get("tie_word_embeddings", False))),
            rope_scaling=config.get("rotary_scaling"),
            dtype=str(config["dtype"]),
        )
    except KeyError as exc:
        raise user_error(f"{where}: {exc.args[0]}", "missing", "a TensorRT-LLM config.json needs it") from exc


def _tensors(archive: Archive) -> TensorStream:
    ranks = sorted((int(m[1]), name) for name in archive.names() if (m := _RANK.fullmatch(name)))
    for _, name in ranks:
        with archive.open(name) as f:
            yield from read_safetensors(f, f"{archive.path}:{name}")


def read(path: Path) -> Checkpoint:
    archive = Archive(path)
    if not looks_like_qnemo(archive.names()):
        raise user_error(str(path), "no config.json + rank0.safetensors inside", "is this a .qnemo checkpoint?")
    with reading(f"{path}:config.json", "JSON"), archive.open("config.json") as f:
        config = json.load(f)
    tokenizer_files = [n for n in _TOKENIZER_FILES if archive.has(n)]
    return Checkpoint(
        path=path,
        format="qnemo",
        arch=arch_from_config(config, f"{path}:config.json"),
        tokenizer=archive.local(*tokenizer_files) if tokenizer_files else None,
        quantization=config.get("quantization"),
        mapping=config.get("mapping"),
        stream=lambda: _tensors(archive),
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
