"""NeMo 2.0 checkpoint directory: ``context/`` (model.yaml, tokenizer) + ``weights/`` (torch_dist)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from launcher.checkpoints import megatron
from launcher.checkpoints.base import Checkpoint, TensorStream, reading
from launcher.checkpoints.hf import check_architecture
from launcher.errors import user_error
from launcher.spec import ModelArch

_ARCHITECTURES = {"LlamaModel": "LlamaForCausalLM", "MistralModel": "MistralForCausalLM"}
_DTYPES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}


def is_nemo2(path: Path) -> bool:
    return path.is_dir() and (path / "context").is_dir() and (path / "weights").is_dir()


def _load_yaml(path: Path) -> dict[str, Any]:
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
    return data


def arch_from_model_yaml(model: dict[str, Any], where: str) -> ModelArch:
    """The architecture of a NeMo 2.0 ``context/model.yaml`` (its ``_target_`` and ``config``)."""
    target = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    architecture = check_architecture(_ARCHITECTURES.get(target, f"{target} (NeMo)"), f"{where}: _target_")
    c = model["config"]
    megatron.check_llama_family(
        where, normalization=str(c.get("normalization", "")), position_embedding=str(c.get("position_embedding_type")),
        swiglu=bool(c.get("gated_linear_unit")) and "silu" in str(c.get("activation_func")),
        bias=bool(c.get("add_bias_linear") or c.get("add_qkv_bias")),
    )
    params_dtype = (c.get("params_dtype") or {}).get("_target_")
    return megatron.model_arch(
        c, architecture=architecture, vocab_size=c["vocab_size"], max_positions=c.get("seq_length", 4096),
        dtype=_DTYPES.get(params_dtype, "bfloat16" if c.get("bf16") else "float32"),
    )


def tokenizer_path(context: Path, tokenizer: dict[str, Any]) -> Path | None:
    """``context/<pretrained_model_name>`` (HF) or ``context/<model_path>`` (sentencepiece), if present."""
    for key in ("pretrained_model_name", "model_path"):
        if tokenizer.get(key) and (context / str(tokenizer[key])).exists():
            return context / str(tokenizer[key])
    return next((p for p in (context / "nemo_tokenizer", context / "tokenizer.model") if p.exists()), None)


def _tensors(weights: Path, arch: ModelArch) -> TensorStream:
    def open_file(name: str) -> IO[bytes]:
        return (weights / name).open("rb")

    for fqn, tensor in megatron.dist_tensors(open_file, str(weights), arch.num_layers):
        yield from megatron.to_hf(megatron.strip_prefix(fqn, ("module.",)), tensor, arch)


def read(path: Path) -> Checkpoint:
    model = _load_yaml(path / "context" / "model.yaml")
    arch = arch_from_model_yaml(model, str(path / "context" / "model.yaml"))
    weights = path / "weights"
    for required in (".metadata", "metadata.json"):
        if not (weights / required).is_file():
            raise user_error(str(weights / required), "missing",
                             "the NeMo 2.0 checkpoint is incomplete; copy its whole weights/ directory")
    return Checkpoint(
        path=path,
        format="nemo2",
        arch=arch,
        tokenizer=tokenizer_path(path / "context", model.get("tokenizer") or {}),
        stream=lambda: _tensors(weights, arch),
    )
