"""NeMo 2.0 checkpoint directory: ``context/`` (model.yaml, tokenizer) + ``weights/`` (torch_dist)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import IO

from launcher.checkpoints import megatron
from launcher.checkpoints.base import Checkpoint, Fields, TensorStream, reading
from launcher.checkpoints.families import FAMILIES, Family
from launcher.errors import user_error
from launcher.spec import ModelArch

# NeMo 2.0 model classes whose Megatron layouts llm-launch reads (NeMo's Gemma 2/3 are built from Transformer
# Engine modules, so no NeMo-written file could be checked here; Qwen3-MoE's expert layout neither)
_READ = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM")
_DTYPES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}


def is_nemo2(path: Path) -> bool:
    return path.is_dir() and (path / "context").is_dir() and (path / "weights").is_dir()


def _load_yaml(path: Path) -> Fields:
    import yaml

    if not path.is_file():
        raise user_error(str(path), "missing", "a NeMo 2.0 checkpoint needs context/model.yaml")
    with reading(path, "YAML"):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise user_error(str(path), "no 'config' mapping", "is this a NeMo 2.0 context/model.yaml?")
    return Fields(data, str(path))


def _family(target: str, config: Fields, where: str) -> Family:
    """The family of NeMo's model class ``target`` (Qwen3 with experts is Qwen3-MoE)."""
    experts = bool(config.int("num_moe_experts", 0, minimum=0))
    found = [f for f in FAMILIES.values() if f.nemo_model == target and bool(f.moe) == experts]
    if not found or found[0].architecture not in _READ:
        readable = ", ".join(FAMILIES[a].nemo_model for a in _READ)
        raise user_error(f"{where}: _target_", f"NeMo model '{target}' cannot be converted by llm-launch",
                         f"it reads NeMo 2.0 {readable} checkpoints (dense Qwen3 only); export others to HF with "
                         "NeMo's own llm.export_ckpt")
    return found[0]


def _vocab_size(config: Fields, context: Path) -> int:
    """``vocab_size``; when it is null (NeMo's Mixtral: set from the tokenizer at load time), the size of the
    tokenizer in ``nemo_tokenizer/tokenizer.json`` (its vocabulary plus added tokens)."""
    if "vocab_size" not in config.data or config.data["vocab_size"] is not None:
        return config.int("vocab_size")
    tokenizer = context / "nemo_tokenizer" / "tokenizer.json"
    if not tokenizer.is_file():
        raise config.error("vocab_size", "is null and context/nemo_tokenizer/tokenizer.json is missing")
    from launcher.checkpoints.hf import read_json

    data = Fields(read_json(tokenizer), str(tokenizer))
    vocab = data.child("model").mapping("vocab") or {}
    added = {t["content"] for t in data.data.get("added_tokens") or []
             if isinstance(t, dict) and isinstance(t.get("content"), str)} - set(vocab)
    if not vocab:
        raise data.error("model: vocab", "is missing; cannot tell the vocabulary size")
    return len(vocab) + len(added)


def arch_from_model_yaml(model: Fields, where: str, context: Path | None = None) -> ModelArch:
    """The architecture of a NeMo 2.0 ``context/model.yaml`` (its ``_target_`` and ``config``)."""
    target = model.str("_target_", "?").rsplit(".", 1)[-1]
    c = model.child("config")
    fam = _family(target, c, where)
    megatron.check_decoder(
        where, normalization=c.str("normalization", ""), position_embedding=c.str("position_embedding_type", ""),
        swiglu=c.bool("gated_linear_unit", False) and "silu" in str(c.data.get("activation_func")),
        bias=c.bool("add_bias_linear", False) or (c.bool("add_qkv_bias", False) and not fam.qkv_bias),
    )
    params_dtype = c.child("params_dtype").str("_target_", "")
    return megatron.model_arch(
        c, architecture=fam.architecture, vocab_size=_vocab_size(c, context) if context else c.int("vocab_size"),
        max_positions=c.int("seq_length", 4096),
        dtype=_DTYPES.get(params_dtype, "bfloat16" if c.bool("bf16", False) else "float32"),
    )


def tokenizer_path(context: Path, tokenizer: Fields) -> Path | None:
    """``context/<pretrained_model_name>`` (HF) or ``context/<model_path>`` (sentencepiece), if present.

    Only paths inside ``context/`` count: a name that is absolute or climbs out with ``..`` (a hub id, or a
    path on the machine that wrote the checkpoint) falls through to the standard ``nemo_tokenizer``.
    """
    for key in ("pretrained_model_name", "model_path"):
        name = tokenizer.str(key, "")
        inside = name and not PurePosixPath(name).is_absolute() and ".." not in PurePosixPath(name).parts
        if inside and (context / name).exists():
            return context / name
    return next((p for p in (context / "nemo_tokenizer", context / "tokenizer.model") if p.exists()), None)


def _tensors(weights: Path, arch: ModelArch, metadata: megatron.Metadata) -> TensorStream:
    def open_file(name: str) -> IO[bytes]:
        return (weights / name).open("rb")

    for fqn, tensor in megatron.dist_tensors(open_file, str(weights), arch.num_layers, metadata):
        yield from megatron.to_hf(megatron.strip_prefix(fqn, ("module.",)), tensor, arch)


def read(path: Path) -> Checkpoint:
    model_yaml = path / "context" / "model.yaml"
    model = _load_yaml(model_yaml)
    arch = arch_from_model_yaml(model, str(model_yaml), path / "context")
    weights = path / "weights"
    for required in (".metadata", "metadata.json"):
        if not (weights / required).is_file():
            raise user_error(str(weights / required), "missing",
                             "the NeMo 2.0 checkpoint is incomplete; copy its whole weights/ directory")
    metadata = megatron.read_metadata(lambda name: (weights / name).open("rb"), str(weights))
    arch = replace(arch, parameters=megatron.count_parameters(metadata))
    return Checkpoint(
        path=path,
        format="nemo2",
        arch=arch,
        tokenizer=tokenizer_path(path / "context", model.child("tokenizer")),
        stream=lambda: _tensors(weights, arch, metadata),
    )
