"""Megatron-core (NeMo) weights: the torch_dist checkpoint reader and the name map to HF Llama.

Shared by NeMo 1.0 ``.nemo`` and NeMo 2.0 directories (shared/formats.md sections 1, 2, 4, 5).
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import re
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from launcher.checkpoints.base import TensorStream, reading
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

OpenFn = Callable[[str], IO[bytes]]

_TOP_LEVEL = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
_IN_LAYER = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "input_layernorm.weight": "input_layernorm.weight",  # local (non-TE) layer spec
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # padded in Megatron; sliced back here


class _Unpickler(pickle.Unpickler):
    """Reads ``.metadata`` without megatron: ``MCoreMetadata`` is torch's ``Metadata``, the rest dummies."""

    def find_class(self, module: str, name: str) -> type:
        if module.startswith("megatron."):
            from torch.distributed.checkpoint.metadata import Metadata

            return Metadata if name == "MCoreMetadata" else type(name, (), {})
        return super().find_class(module, name)


def split_qkv(weight: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's QKV, interleaved per query group ``[q.., k, v]`` x groups, into HF q, k, v."""
    groups, per_group, d = arch.num_kv_heads, arch.num_attention_heads // arch.num_kv_heads, arch.head_dim
    w = weight.reshape(groups, per_group + 2, d, -1)
    hidden = w.shape[-1]
    return (w[:, :per_group].reshape(-1, hidden), w[:, per_group].reshape(-1, hidden),
            w[:, per_group + 1].reshape(-1, hidden))


def layer_to_hf(layer: int, name: str, tensor: torch.Tensor, arch: ModelArch) -> TensorStream:
    """The HF tensors of one layer's Megatron tensor ``name`` (qkv and fc1 are split)."""
    prefix = f"model.layers.{layer}."
    if name == "self_attention.linear_qkv.weight":
        q, k, v = split_qkv(tensor, arch)
        yield from ((prefix + f"self_attn.{x}_proj.weight", t) for x, t in zip("qkv", (q, k, v), strict=True))
    elif name == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        yield prefix + "mlp.gate_proj.weight", gate
        yield prefix + "mlp.up_proj.weight", up
    elif name in _IN_LAYER:
        yield prefix + _IN_LAYER[name], tensor
    else:
        raise user_error("model.checkpoint", f"unexpected Megatron tensor 'decoder.layers.{layer}.{name}'",
                         "only Llama-family (SwiGLU, RMSNorm, no bias) NeMo models are supported")


def to_hf(name: str, tensor: torch.Tensor, arch: ModelArch) -> TensorStream:
    """HF tensors for one unprefixed, per-layer Megatron tensor (``decoder.layers.3.mlp.linear_fc1.weight``)."""
    if "_extra_state" in name:
        return
    if match := _LAYER.fullmatch(name):
        yield from layer_to_hf(int(match[1]), match[2], tensor, arch)
    elif name in _TOP_LEVEL:
        hf = _TOP_LEVEL[name]
        yield hf, tensor[: arch.vocab_size] if hf in _VOCAB_ROWS else tensor
    else:
        raise user_error("model.checkpoint", f"unexpected Megatron tensor '{name}'",
                         "only Llama-family (SwiGLU, RMSNorm, no bias) NeMo models are supported")


def strip_prefix(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# --------------------------------------------------------------------------- torch_dist checkpoints
def read_metadata(open_fn: OpenFn, where: str):
    """The ``torch.distributed.checkpoint`` ``Metadata`` of a Megatron ``torch_dist`` weights dir."""
    with reading(f"{where}/metadata.json", "dist-checkpoint metadata"), open_fn("metadata.json") as f:
        backend = json.load(f).get("sharded_backend")
    if backend != "torch_dist":
        raise user_error(f"{where}/metadata.json", f"sharded_backend '{backend}' is not supported",
                         "re-save the checkpoint with the torch_dist backend (NeMo's default)")
    with reading(f"{where}/.metadata", "dist-checkpoint metadata"), open_fn(".metadata") as f:
        return _Unpickler(f).load()


def dist_tensors(open_fn: OpenFn, where: str, num_layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Per-layer ``(fqn, tensor)`` from a ``torch_dist`` dir, reading chunk by chunk.

    A stacked tensor ``...decoder.layers.X`` (leading dim = layers) comes out as one
    ``...decoder.layers.{l}.X`` per layer, so memory stays bounded by one layer's slice.
    """
    import torch
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_metadata(open_fn, where)
    storage: dict[str, list] = {}
    for index, info in metadata.storage_data.items():
        storage.setdefault(index.fqn, []).append((tuple(index.offset), info))

    @functools.lru_cache(maxsize=1)  # a chunk spanning several layers is read once
    def chunk(relative_path: str, offset: int, length: int) -> torch.Tensor:
        with reading(f"{where}/{relative_path}", "dist-checkpoint chunk"), open_fn(relative_path) as f:
            f.seek(offset)
            return torch.load(io.BytesIO(f.read(length)), map_location="cpu", weights_only=True)

    def assemble(fqn: str, shape: tuple[int, ...], dtype: torch.dtype, layer: int | None) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        for offsets, info in storage.get(fqn, []):
            data = chunk(info.relative_path, info.offset, info.length)
            if layer is not None:
                if not offsets[0] <= layer < offsets[0] + data.shape[0]:
                    continue
                data, offsets = data[layer - offsets[0]], offsets[1:]
            out[tuple(slice(o, o + s) for o, s in zip(offsets, data.shape, strict=True))] = data
        return out

    for fqn, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata) or "_extra_state" in fqn:
            continue
        shape, dtype = tuple(meta.size), meta.properties.dtype
        if ".decoder.layers." in fqn and not _LAYER.search(fqn) and shape[0] == num_layers:
            head, _, rest = fqn.partition("decoder.layers.")
            for layer in range(num_layers):
                yield f"{head}decoder.layers.{layer}.{rest}", assemble(fqn, shape[1:], dtype, layer)
        else:
            yield fqn, assemble(fqn, shape, dtype, None)


def vocab_rows(open_fn: OpenFn, where: str, fqn: str) -> int | None:
    """Rows of ``fqn`` (e.g. the padded embedding) from the metadata alone."""
    meta = read_metadata(open_fn, where).state_dict_metadata.get(fqn)
    return int(meta.size[0]) if meta is not None else None


def rope_scaling(config: dict) -> dict | None:
    """HF ``rope_scaling`` for Llama 3.1-style NeMo configs (``scale_factor``, ``low_freq_factor``, ...)."""
    if "scale_factor" not in config and "low_freq_factor" not in config:
        return None
    return {
        "rope_type": "llama3",
        "factor": float(config.get("scale_factor", 8.0)),
        "low_freq_factor": float(config.get("low_freq_factor", 1.0)),
        "high_freq_factor": float(config.get("high_freq_factor", 4.0)),
        "original_max_position_embeddings": int(config.get("old_context_len", 8192)),
    }


def check_llama_family(where: str, *, normalization: str, position_embedding: str, swiglu: bool,
                       bias: bool) -> None:
    """Refuse Megatron models that are not SwiGLU + RMSNorm + RoPE without biases (one error naming the key)."""
    problems = {
        "normalization": normalization.lower() != "rmsnorm" and normalization,
        "position_embedding_type": position_embedding != "rope" and position_embedding,
        "activation": not swiglu and "not SwiGLU",
        "bias": bias and "linear biases",
    }
    for key, value in problems.items():
        if value:
            raise user_error(f"{where}: {key}", f"'{value}' is not a Llama-family model",
                             "only SwiGLU + RMSNorm + RoPE decoders without biases (Llama, Mistral) are supported")


def model_arch(config: dict, *, architecture: str, vocab_size: int, max_positions: int, dtype: str) -> ModelArch:
    """The architecture from the Megatron keys NeMo 1.0 and 2.0 configs share; callers give the rest."""
    heads = config["num_attention_heads"]
    return ModelArch(
        architecture=architecture,
        num_layers=config["num_layers"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"],
        num_attention_heads=heads,
        num_kv_heads=config.get("num_query_groups") or heads,
        head_dim=config.get("kv_channels") or config["hidden_size"] // heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        rope_theta=float(config.get("rotary_base", 10000.0)),
        rms_norm_eps=float(config.get("layernorm_epsilon", 1e-5)),
        tie_word_embeddings=bool(config.get("share_embeddings_and_output_weights", False)),
        rope_scaling=rope_scaling(config),
        dtype=dtype,
    )
