"""NeMo 1.0 ``.nemo``: a tar (maybe gzip) with ``model_config.yaml``, tokenizer files and weights.

Weights are either a legacy ``model_weights.ckpt`` (one zip-format ``torch.save``, whose pickle is read at
inspection and whose tensors are read one storage at a time straight from the tar) or a dist-ckpt
``model_weights/`` directory (read chunk by chunk straight from the tar).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from launcher.checkpoints import megatron
from launcher.checkpoints.archive import Archive
from launcher.checkpoints.base import (
    Checkpoint,
    Fields,
    TensorStream,
    reading,
    shown,
    torch_file_index,
    torch_file_tensors,
)
from launcher.errors import user_error
from launcher.spec import ModelArch

CONFIG = "model_config.yaml"
LEGACY_WEIGHTS = "model_weights.ckpt"
DIST_WEIGHTS = "model_weights"
_PREFIXES = ("model.module.", "model.")  # megatron_amp_O2 adds "module."
_DTYPES = {"16": "float16", "16-mixed": "float16", "bf16": "bfloat16", "bf16-mixed": "bfloat16", "32": "float32"}
_EMBEDDING = "embedding.word_embeddings.weight"


def _config(archive: Archive) -> Fields:
    import yaml

    if not archive.has(CONFIG):
        raise user_error(str(archive.path), f"no {CONFIG} inside", "is this a NeMo 1.0 .nemo file?")
    text = archive.read_small(CONFIG, "model config")
    with reading(f"{archive.path}:{CONFIG}", "YAML"):
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from exc
    if not isinstance(config, dict):
        raise user_error(f"{archive.path}:{CONFIG}", "not a mapping", "is this a NeMo 1.0 .nemo file?")
    return Fields(config, f"{archive.path}:{CONFIG}")


def _tokenizer(archive: Archive, config: Fields) -> Path | None:
    """The sentencepiece model the config names (``model: nemo:<hex>_tokenizer.model``), on disk."""
    spec = config.child("tokenizer")
    model = spec.str("model", "")
    if spec.data.get("library") != "sentencepiece" or not model:
        return None
    file_name = model.removeprefix("nemo:").rsplit("/", 1)[-1]
    matches = [name for name in archive.names() if name.rsplit("/", 1)[-1] == file_name]
    if not matches:
        raise user_error(f"{archive.path}:{CONFIG}", f"tokenizer.model '{shown(model)}' is not in the archive",
                         "the .nemo file is incomplete")
    return archive.local(matches[0]) / matches[0]


class _Weights:
    """The weights of a ``.nemo``: their index (read at inspection) and a stream of Megatron-named tensors."""

    def __init__(self, archive: Archive) -> None:
        self.archive, self.where = archive, f"{archive.path}:{DIST_WEIGHTS}"
        self.legacy = archive.has(LEGACY_WEIGHTS)
        if self.legacy:
            where = f"{archive.path}:{LEGACY_WEIGHTS}"
            with archive.open(LEGACY_WEIGHTS) as f:
                state = torch_file_index(f, where)
            self.index = state.get("state_dict", state)
            if not isinstance(self.index, dict):
                raise user_error(where, "its state_dict is not a mapping", "re-save the checkpoint")
        else:
            self.metadata = megatron.read_metadata(self._open_dist, self.where)

    def _open_dist(self, name: str):
        return self.archive.open(f"{DIST_WEIGHTS}/{name}")

    def parameters(self) -> int | None:
        """Weights in the index (Megatron's padded embedding rows included)."""
        if self.legacy:
            return sum(t.numel() for k, t in self.index.items() if hasattr(t, "numel") and "_extra_state" not in
                       str(k)) or None
        return megatron.count_parameters(self.metadata)

    def vocab_rows(self) -> int | None:
        """Rows of the (padded) embedding, from the index alone."""
        if self.legacy:
            rows = [t.shape[0] for k, t in self.index.items() if str(k).endswith(_EMBEDDING) and t.dim()]
            return rows[0] if rows else None
        return megatron.vocab_rows(self.metadata, f"model.{_EMBEDDING}")

    def tensors(self, num_layers: int) -> TensorStream:
        if self.legacy:
            with self.archive.open(LEGACY_WEIGHTS) as f:
                yield from torch_file_tensors(f, f"{self.where}:{LEGACY_WEIGHTS}", self.index)
        else:
            yield from megatron.dist_tensors(self._open_dist, self.where, num_layers, self.metadata)


def _vocab_size(tokenizer: Path | None, weights: _Weights, where: str) -> int:
    """The real vocabulary: the tokenizer's (Megatron pads the embedding rows), else the embedding's rows."""
    if tokenizer is not None:
        import sentencepiece

        with reading(tokenizer, "sentencepiece model"):
            return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    rows = weights.vocab_rows()
    if not rows:
        raise user_error(where, "cannot tell the vocabulary size", "add the tokenizer to the .nemo")
    return rows


def arch_from_config(config: Fields, vocab_size: int) -> ModelArch:
    """The architecture of a flat NeMo 1.0 ``model_config.yaml``."""
    megatron.check_decoder(
        config.where, normalization=config.str("normalization", ""),
        position_embedding=config.str("position_embedding_type", "learned_absolute"),
        swiglu=config.str("activation", "gelu") in ("swiglu", "fast-swiglu"), bias=config.bool("bias", True),
    )
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if config.int(key, 1) != 1:
            raise user_error(f"{config.where}: {key}", "sharded (TP/PP > 1) .nemo files are not supported yet",
                             "re-save the model with TP=PP=1")
    if config.int("num_moe_experts", 0, minimum=0):  # NeMo 1.0 keeps the family in flags, not a model class
        raise user_error(f"{config.where}: num_moe_experts", "NeMo 1.0 mixture-of-experts checkpoints cannot be "
                         "converted by llm-launch", "import the model into NeMo 2.0 (its MixtralModel is read) or "
                         "export it to HF with NeMo")
    return megatron.model_arch(
        config, architecture="LlamaForCausalLM", vocab_size=vocab_size,
        max_positions=config.int(config.key("max_position_embeddings", "encoder_seq_length"), 4096),
        dtype=_DTYPES.get(str(config.data.get("precision", 32)), "float32"),
    )


def _tensors(weights: _Weights, arch: ModelArch) -> TensorStream:
    for name, tensor in weights.tensors(arch.num_layers):
        yield from megatron.to_hf(megatron.strip_prefix(name, _PREFIXES), tensor, arch)


def read(path: Path) -> Checkpoint:
    archive = Archive(path)
    config = _config(archive)
    if not archive.has(LEGACY_WEIGHTS) and not archive.has(f"{DIST_WEIGHTS}/.metadata"):
        raise user_error(str(path), f"neither {LEGACY_WEIGHTS} nor {DIST_WEIGHTS}/.metadata inside",
                         "TP/PP-sharded (mp_rank_*) .nemo files are not supported; re-save with TP=PP=1")
    tokenizer = _tokenizer(archive, config)
    weights = _Weights(archive)
    arch = replace(arch_from_config(config, _vocab_size(tokenizer, weights, str(path))),
                   parameters=weights.parameters())
    return Checkpoint(path=path, format="nemo", arch=arch, tokenizer=tokenizer,
                      stream=lambda: _tensors(weights, arch))
