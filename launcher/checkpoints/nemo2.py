"""NeMo 2.0 checkpoint directory: ``context/`` (model.yaml, tokenizer) + ``weights/`` (torch_dist)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import IO

from launcher.checkpoints import megatron
from launcher.checkpoints.base import Checkpoint, Fields, TensorStream, reading
from launcher.checkpoints.hf import check_architecture
from launcher.errors import user_error
from launcher.spec import ModelArch

_ARCHITECTURES = {"LlamaModel": "LlamaForCausalLM", "MistralModel": "MistralForCausalLM"}
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


def arch_from_model_yaml(model: Fields, where: str) -> ModelArch:
    """The architecture of a NeMo 2.0 ``context/model.yaml`` (its ``_target_`` and ``config``)."""
    target = model.str("_target_", "?").rsplit(".", 1)[-1]
    architecture = check_architecture(_ARCHITECTURES.get(target, f"{target} (NeMo)"), f"{where}: _target_")
    c = model.child("config")
    megatron.check_llama_family(
        where, normalization=c.str("normalization", ""), position_embedding=c.str("position_embedding_type", ""),
        swiglu=c.bool("gated_linear_unit", False) and "silu" in str(c.data.get("activation_func")),
        bias=c.bool("add_bias_linear", False) or c.bool("add_qkv_bias", False),
    )
    params_dtype = c.child("params_dtype").str("_target_", "")
    return megatron.model_arch(
        c, architecture=architecture, vocab_size=c.int("vocab_size"), max_positions=c.int("seq_length", 4096),
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
    arch = arch_from_model_yaml(model, str(model_yaml))
    weights = path / "weights"
    for required in (".metadata", "metadata.json"):
        if not (weights / required).is_file():
            raise user_error(str(weights / required), "missing",
                             "the NeMo 2.0 checkpoint is incomplete; copy its whole weights/ directory")
    metadata = megatron.read_metadata(lambda name: (weights / name).open("rb"), str(weights))
    return Checkpoint(
        path=path,
        format="nemo2",
        arch=arch,
        tokenizer=tokenizer_path(path / "context", model.child("tokenizer")),
        stream=lambda: _tensors(weights, arch, metadata),
    )
