"""NeMo 1.0 ``.nemo``: a tar (maybe gzip) with ``model_config.yaml``, tokenizer files and weights.

Weights are either a legacy ``model_weights.ckpt`` (one ``torch.save``, extracted and memory-mapped)
or a dist-ckpt ``model_weights/`` directory (read chunk by chunk straight from the tar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.checkpoints import megatron
from launcher.checkpoints.archive import Archive
from launcher.checkpoints.base import Checkpoint, TensorStream, load_torch_file, reading
from launcher.errors import user_error
from launcher.spec import ModelArch

CONFIG = "model_config.yaml"
LEGACY_WEIGHTS = "model_weights.ckpt"
DIST_WEIGHTS = "model_weights"
_PREFIXES = ("model.module.", "model.")  # megatron_amp_O2 adds "module."
_DTYPES = {"16": "float16", "16-mixed": "float16", "bf16": "bfloat16", "bf16-mixed": "bfloat16", "32": "float32"}


def _config(archive: Archive) -> dict[str, Any]:
    import yaml

    if not archive.has(CONFIG):
        raise user_error(str(archive.path), f"no {CONFIG} inside", "is this a NeMo 1.0 .nemo file?")
    with reading(f"{archive.path}:{CONFIG}", "YAML"), archive.open(CONFIG) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from exc
    if not isinstance(config, dict):
        raise user_error(f"{archive.path}:{CONFIG}", "not a mapping", "is this a NeMo 1.0 .nemo file?")
    return config


def _tokenizer(archive: Archive, config: dict[str, Any]) -> Path | None:
    """The sentencepiece model the config names (``model: nemo:<hex>_tokenizer.model``), on disk."""
    spec = config.get("tokenizer") or {}
    model = str(spec.get("model") or "")
    if spec.get("library") != "sentencepiece" or not model:
        return None
    matches = archive.glob(f"*{model.removeprefix('nemo:').rsplit('/', 1)[-1]}")
    if not matches:
        raise user_error(f"{archive.path}:{CONFIG}", f"tokenizer.model '{model}' is not in the archive",
                         "the .nemo file is incomplete")
    return archive.local(matches[0]) / matches[0]


def _vocab_size(tokenizer: Path | None, archive: Archive) -> int:
    """The real vocabulary: the tokenizer's (Megatron pads the embedding rows), else the embedding's rows."""
    if tokenizer is not None:
        import sentencepiece

        with reading(tokenizer, "sentencepiece model"):
            return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    if archive.has(LEGACY_WEIGHTS):
        state = load_torch_file(archive.local(LEGACY_WEIGHTS) / LEGACY_WEIGHTS)
        state = state.get("state_dict", state)
        name = next(k for k in state if k.endswith("embedding.word_embeddings.weight"))
        return state[name].shape[0]
    rows = megatron.vocab_rows(lambda n: archive.open(f"{DIST_WEIGHTS}/{n}"), str(archive.path),
                               "model.embedding.word_embeddings.weight")
    if rows is None:
        raise user_error(str(archive.path), "cannot tell the vocabulary size", "add the tokenizer to the .nemo")
    return rows


def arch_from_config(config: dict[str, Any], vocab_size: int, where: str) -> ModelArch:
    """The architecture of a flat NeMo 1.0 ``model_config.yaml``."""
    megatron.check_llama_family(
        where, normalization=str(config.get("normalization", "")),
        position_embedding=str(config.get("position_embedding_type", "learned_absolute")),
        swiglu=str(config.get("activation")) in ("swiglu", "fast-swiglu"), bias=bool(config.get("bias", True)),
    )
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        if int(config.get(key) or 1) != 1:
            raise user_error(f"{where}: {key}", "sharded (TP/PP > 1) .nemo files are not supported yet",
                             "re-save the model with TP=PP=1")
    return megatron.model_arch(
        config, architecture="LlamaForCausalLM", vocab_size=vocab_size,
        max_positions=config.get("max_position_embeddings") or config.get("encoder_seq_length", 4096),
        dtype=_DTYPES.get(str(config.get("precision", 32)), "float32"),
    )


def _tensors(archive: Archive, arch: ModelArch) -> TensorStream:
    if archive.has(LEGACY_WEIGHTS):
        state = load_torch_file(archive.local(LEGACY_WEIGHTS) / LEGACY_WEIGHTS)
        named = state.get("state_dict", state).items()
    else:
        named = megatron.dist_tensors(lambda n: archive.open(f"{DIST_WEIGHTS}/{n}"), str(archive.path),
                                      arch.num_layers)
    for name, tensor in named:
        yield from megatron.to_hf(megatron.strip_prefix(name, _PREFIXES), tensor, arch)


def read(path: Path) -> Checkpoint:
    archive = Archive(path)
    config = _config(archive)
    if not archive.has(LEGACY_WEIGHTS) and not archive.has(f"{DIST_WEIGHTS}/.metadata"):
        raise user_error(str(path), f"neither {LEGACY_WEIGHTS} nor {DIST_WEIGHTS}/.metadata inside",
                         "TP/PP-sharded (mp_rank_*) .nemo files are not supported; re-save with TP=PP=1")
    tokenizer = _tokenizer(archive, config)
    arch = arch_from_config(config, _vocab_size(tokenizer, archive), f"{path}:{CONFIG}")
    return Checkpoint(path=path, format="nemo", arch=arch, tokenizer=tokenizer,
                      stream=lambda: _tensors(archive, arch))
