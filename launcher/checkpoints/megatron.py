"""Megatron-core (NeMo) weights: the torch_dist checkpoint reader and the name map to HF Llama.

Shared by NeMo 1.0 ``.nemo`` and NeMo 2.0 directories (shared/formats.md sections 1, 2, 4, 5).
"""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING

from launcher.checkpoints.base import DTYPE_BYTES, Fields, TensorStream, check_arch, damaged, reading, shown
from launcher.checkpoints.families import EXPERT_LEAVES, EXPERTS, FAMILIES, ROUTER, Family
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
_QK_NORMS = {"self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
             "self_attention.k_layernorm.weight": "self_attn.k_norm.weight"}
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # padded in Megatron; sliced back here


class _Record:
    """One object of a torch_dist ``.metadata`` as plain attributes: what the pickled data class held.

    Stand-ins rather than torch's own classes: nothing of theirs runs while a file from the internet is
    unpickled (no ``__setstate__``), and reading the metadata needs no torch import (two seconds) at plan.
    """

    FIELDS: tuple[str, ...] = ()  # the order of a tuple state (TensorProperties pickles one)

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and self.FIELDS and len(state) == len(self.FIELDS):
            state = dict(zip(self.FIELDS, state, strict=True))
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise pickle.UnpicklingError(f"{type(self).__name__} has a state of {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return type(self).__name__


class Metadata(_Record):
    """Stand-in for torch_dist's ``Metadata``: ``state_dict_metadata`` (fqn -> tensor or bytes metadata) and
    ``storage_data`` (``MetadataIndex`` -> ``_StorageInfo``). Class attributes are the data class's defaults."""

    storage_data = None


class TensorStorageMetadata(_Record):
    """Stand-in for ``TensorStorageMetadata``: ``properties`` (a ``TensorProperties``), ``size``, ``chunks``."""


class BytesStorageMetadata(_Record):
    """Stand-in for ``BytesStorageMetadata`` (a pickled object, e.g. ``_extra_state``; never a weight)."""


class TensorProperties(_Record):
    """Stand-in for ``TensorProperties`` (``dtype`` ...), which pickles its fields as a tuple."""

    FIELDS = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")


class StorageInfo(_Record):
    """Stand-in for ``_StorageInfo``: ``relative_path``, ``offset``, ``length`` of one chunk (fields that are
    None are not pickled)."""


class MetadataIndex(_Record):
    """Stand-in for ``MetadataIndex``: a dictionary key, equal and hashed by ``fqn`` and ``offset`` (None, the
    default, is not pickled: a bytes item) as the frozen data class is."""

    offset = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataIndex) and _index_key(self) == _index_key(other)

    def __hash__(self) -> int:
        return hash(_index_key(self))


def _index_key(index: MetadataIndex) -> tuple:
    return index.__dict__.get("fqn"), index.__dict__.get("offset")


@dataclass(frozen=True)
class TorchDtype:
    """A torch dtype named in a ``.metadata`` (``torch.bfloat16``), by name; ``torch.<name>`` when reading."""

    name: str

    @property
    def itemsize(self) -> int:
        return DTYPE_BYTES[self.name]


def _unused(name: str) -> type[_Record]:
    """Stand-in for a class whose objects a ``.metadata`` holds but no reader uses (plans, storage meta)."""
    return type(name, (_Record,), {"__doc__": f"Stand-in for ``{name}``; unused."})


# Every global a torch_dist ``.metadata`` names, recorded from the file NeMo 2.7.3 / megatron-core 0.15.3 wrote
# (shared/fixtures/nemo-written) and from our fixtures (read with pickletools), each with what it loads as:
# enums (memory format, write item type) as their values, ``torch.Size`` as a tuple, a layout as its name.
_DCP = "torch.distributed.checkpoint"
_MEGATRON = "megatron.core.dist_checkpointing.strategies.torch"
_ALLOWED: dict[tuple[str, str], object] = {
    (f"{_DCP}.metadata", "Metadata"): Metadata,
    (_MEGATRON, "MCoreMetadata"): Metadata,  # megatron's subclass of Metadata
    (_MEGATRON, "MCoreSavePlan"): _unused("MCoreSavePlan"),  # each rank's plan, in all_local_plans
    (f"{_DCP}.metadata", "StorageMeta"): _unused("StorageMeta"),
    (f"{_DCP}.metadata", "TensorStorageMetadata"): TensorStorageMetadata,
    (f"{_DCP}.metadata", "BytesStorageMetadata"): BytesStorageMetadata,
    (f"{_DCP}.metadata", "ChunkStorageMetadata"): _unused("ChunkStorageMetadata"),
    (f"{_DCP}.metadata", "TensorProperties"): TensorProperties,
    (f"{_DCP}.metadata", "MetadataIndex"): MetadataIndex,
    (f"{_DCP}.metadata", "_MEM_FORMAT_ENCODING"): int,
    (f"{_DCP}.planner", "WriteItem"): _unused("WriteItem"),
    (f"{_DCP}.planner", "TensorWriteData"): _unused("TensorWriteData"),
    (f"{_DCP}.planner", "WriteItemType"): int,
    (f"{_DCP}.filesystem", "_StorageInfo"): StorageInfo,
    ("torch", "Size"): tuple,
    ("torch.serialization", "_get_layout"): str,  # called with the layout's name, "torch.strided"
    **{("torch", name): TorchDtype(name) for name in DTYPE_BYTES},
}


class _Unpickler(pickle.Unpickler):
    """Reads ``.metadata`` without torch, torch.distributed or megatron, and without running anything: only
    the globals in ``_ALLOWED``, each as a plain stand-in; anything else is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load '{shown(module)}.{shown(name)}' (not a checkpoint "
                                     "metadata class; a pickle naming it can run code)")


def split_qkv(weight: torch.Tensor, arch: ModelArch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's QKV (weight or bias), interleaved per query group ``[q.., k, v]`` x groups, into HF q, k, v."""
    groups, per_group, d = arch.num_kv_heads, arch.num_attention_heads // arch.num_kv_heads, arch.head_dim
    w = weight.reshape(groups, per_group + 2, d, *weight.shape[1:])
    rest = weight.shape[1:]
    return (w[:, :per_group].reshape(-1, *rest), w[:, per_group].reshape(-1, *rest),
            w[:, per_group + 1].reshape(-1, *rest))


# Megatron expert weights: stacked (``experts.experts.linear_fc1.weight`` [E, ...]), one module per expert
# (SequentialMLP ``experts.local_experts.E.linear_fc1.weight``) or grouped GEMM (``experts.linear_fc1.weightE``)
_EXPERTS = re.compile(r"mlp\.experts\.(?:experts\.(linear_fc[12])\.weight|local_experts\.(\d+)\.(linear_fc[12])\.weight"
                      r"|(linear_fc[12])\.weight(\d+))")


def _expert_tensors(fam: Family, prefix: str, fc: str, expert: int | None, tensor: torch.Tensor) -> TensorStream:
    """HF expert weights of one Megatron expert tensor (``expert`` None: all experts stacked on dim 0)."""
    gate, down, up = EXPERT_LEAVES[fam.moe or ""]
    for e, weight in enumerate(tensor) if expert is None else ((expert, tensor),):
        name = f"{prefix}{EXPERTS[fam.moe or '']}.{e}."
        if fc == "linear_fc1":
            first, second = weight.chunk(2, dim=0)
            yield name + f"{gate}.weight", first
            yield name + f"{up}.weight", second
        else:
            yield name + f"{down}.weight", weight


def layer_to_hf(layer: int, name: str, tensor: torch.Tensor, arch: ModelArch) -> TensorStream:
    """The HF tensors of one layer's Megatron tensor ``name`` (qkv, fc1 and stacked experts are split)."""
    fam = FAMILIES[arch.architecture]
    prefix = f"model.layers.{layer}."
    if name in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        leaf = name.rsplit(".", 1)[1]
        q, k, v = split_qkv(tensor, arch)
        yield from ((prefix + f"self_attn.{x}_proj.{leaf}", t) for x, t in zip("qkv", (q, k, v), strict=True))
    elif name == "mlp.linear_fc1.weight" and fam.moe is None:
        gate, up = tensor.chunk(2, dim=0)
        yield prefix + "mlp.gate_proj.weight", gate
        yield prefix + "mlp.up_proj.weight", up
    elif name == "mlp.router.weight" and fam.moe:
        yield prefix + ROUTER[fam.moe], tensor
    elif fam.moe and (match := _EXPERTS.fullmatch(name)):
        stacked, local, grouped = match[1], match[3], match[4]
        fc = stacked or local or grouped
        expert = None if stacked else int(match[2] or match[5])
        yield from _expert_tensors(fam, prefix, fc, expert, tensor)
    elif name in _IN_LAYER and (fam.moe is None or name != "mlp.linear_fc2.weight"):
        yield prefix + _IN_LAYER[name], tensor
    elif name in _QK_NORMS and fam.qk_norm:
        yield prefix + _QK_NORMS[name], tensor
    else:
        raise user_error("model.checkpoint", f"unexpected Megatron tensor 'decoder.layers.{layer}.{name}' for "
                         f"{arch.architecture}", "the checkpoint's weights do not match its model config")


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
        raise user_error("model.checkpoint", f"unexpected Megatron tensor '{name}' for {arch.architecture}",
                         "the checkpoint's weights do not match its model config")


def strip_prefix(name: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# --------------------------------------------------------------------------- torch_dist checkpoints
def read_metadata(open_fn: OpenFn, where: str) -> Metadata:
    """The checked ``torch.distributed.checkpoint`` ``Metadata`` of a Megatron ``torch_dist`` weights dir."""
    with reading(f"{where}/metadata.json", "dist-checkpoint metadata"), open_fn("metadata.json") as f:
        backend = Fields(json.load(f), f"{where}/metadata.json").str("sharded_backend", "")
    if backend != "torch_dist":
        raise user_error(f"{where}/metadata.json", f"sharded_backend '{shown(backend)}' is not supported",
                         "re-save the checkpoint with the torch_dist backend (NeMo's default)")
    with reading(f"{where}/.metadata", "dist-checkpoint metadata"), open_fn(".metadata") as f:
        try:
            metadata = _Unpickler(f).load()
        except pickle.UnpicklingError:
            raise
        except Exception as exc:
            raise pickle.UnpicklingError(f"{type(exc).__name__}: {exc}") from exc
    return _checked(metadata, f"{where}/.metadata")


def _checked(metadata: object, where: str) -> Metadata:
    """``metadata`` if its structure is what torch_dist writes, else one error naming the file.

    The unpickler admits only data classes, but their fields can hold anything: sizes, offsets and chunk
    file names are checked here, so the reader never indexes, allocates or opens what the pickle made up.
    """
    def sizes(value: object) -> bool:
        return isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v < 2**63 for v in value)

    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63

    if not isinstance(metadata, Metadata):
        raise damaged(where, f"holds {type(metadata).__name__}, not a torch.distributed.checkpoint Metadata")
    tensors, storage = getattr(metadata, "state_dict_metadata", None), getattr(metadata, "storage_data", None)
    if not isinstance(tensors, dict) or not isinstance(storage, dict):
        raise damaged(where, "state_dict_metadata or storage_data is not a mapping")
    for fqn, meta in tensors.items():  # instances built without __init__ may lack fields: getattr throughout
        if isinstance(meta, BytesStorageMetadata) and isinstance(fqn, str):
            continue
        properties = getattr(meta, "properties", None)
        if not (isinstance(fqn, str) and isinstance(meta, TensorStorageMetadata)
                and isinstance(properties, TensorProperties) and isinstance(getattr(properties, "dtype", None),
                                                                            TorchDtype)
                and sizes(getattr(meta, "size", None))):
            raise damaged(where, f"entry '{shown(fqn if isinstance(fqn, str) else type(fqn).__name__)}' is not a "
                                 "tensor's metadata (dtype and size)")
    stored: dict[str, int] = {}
    for index, info in storage.items():
        fqn, offset = getattr(index, "fqn", None), getattr(index, "offset", None)
        if not (isinstance(index, MetadataIndex) and isinstance(fqn, str) and (offset is None or sizes(offset))
                and isinstance(info, StorageInfo) and count(getattr(info, "offset", None))
                and count(getattr(info, "length", None))):
            raise damaged(where, f"storage entry for '{shown(fqn if isinstance(fqn, str) else '?')}' is not a "
                                 "chunk's file, offset and length")
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or PurePosixPath(name).name != name or name in ("", ".", ".."):
            raise damaged(where, f"chunk file {shown(name if isinstance(name, str) else '?')} is not a file name "
                                 "in the weights directory")
        stored[fqn] = stored.get(fqn, 0) + info.length
    for fqn, meta in tensors.items():  # torch.save blobs are larger than their raw data, never smaller
        if not isinstance(meta, TensorStorageMetadata):
            continue
        if math.prod(meta.size) * meta.properties.dtype.itemsize > stored.get(fqn, 0):
            raise damaged(where, f"tensor '{shown(fqn)}' of shape {list(meta.size)} needs more bytes than its "
                                 f"chunks hold ({stored.get(fqn, 0)})")
    return metadata


def dist_tensors(open_fn: OpenFn, where: str, num_layers: int,
                 metadata: Metadata | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Per-layer ``(fqn, tensor)`` from a ``torch_dist`` dir, reading chunk by chunk.

    A stacked tensor ``...decoder.layers.X`` (leading dim = layers) comes out as one
    ``...decoder.layers.{l}.X`` per layer, so memory stays bounded by one layer's slice.
    """
    import torch

    metadata = read_metadata(open_fn, where) if metadata is None else metadata
    storage: dict[str, list] = {}
    for index, info in metadata.storage_data.items():
        if index.offset is not None:  # None: a bytes item (``_extra_state``), never a weight
            storage.setdefault(index.fqn, []).append((tuple(index.offset), info))

    @functools.lru_cache(maxsize=1)  # a chunk spanning several layers is read once
    def chunk(relative_path: str, offset: int, length: int) -> torch.Tensor:
        with reading(f"{where}/{relative_path}", "dist-checkpoint chunk"), open_fn(relative_path) as f:
            if offset + length > f.seek(0, 2):
                raise EOFError(f"a chunk at bytes {offset}..{offset + length} lies past the end of the file")
            f.seek(offset)
            data = torch.load(io.BytesIO(f.read(length)), map_location="cpu", weights_only=True)
        if not isinstance(data, torch.Tensor):
            raise damaged(f"{where}/{relative_path}", f"the chunk at byte {offset} is not a tensor")
        return data

    def assemble(fqn: str, shape: tuple[int, ...], dtype: torch.dtype, layer: int | None) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype)
        for offsets, info in storage.get(fqn, []):
            data = chunk(info.relative_path, info.offset, info.length)
            with reading(f"{where}/{info.relative_path}", f"chunk of {shown(fqn)}"):
                if layer is not None:
                    if not offsets or not offsets[0] <= layer < offsets[0] + data.shape[0]:
                        continue
                    data, offsets = data[layer - offsets[0]], offsets[1:]
                out[tuple(slice(o, o + s) for o, s in zip(offsets, data.shape, strict=True))] = data
        return out

    for fqn, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata) or "_extra_state" in fqn:
            continue
        shape, dtype = tuple(meta.size), getattr(torch, meta.properties.dtype.name)
        if ".decoder.layers." in fqn and not _LAYER.search(fqn) and shape[:1] == (num_layers,):
            head, _, rest = fqn.partition("decoder.layers.")
            for layer in range(num_layers):
                yield f"{head}decoder.layers.{layer}.{rest}", assemble(fqn, shape[1:], dtype, layer)
        else:
            yield fqn, assemble(fqn, shape, dtype, None)


def vocab_rows(metadata: Metadata, fqn: str) -> int | None:
    """Rows of ``fqn`` (e.g. the padded embedding) from the metadata alone."""
    size = getattr(metadata.state_dict_metadata.get(fqn), "size", ())
    return int(size[0]) if size else None


def rope_scaling(config: Fields) -> dict | None:
    """HF ``rope_scaling`` for Llama 3.1-style NeMo configs (``scale_factor``, ``low_freq_factor``, ...)."""
    if "scale_factor" not in config.data and "low_freq_factor" not in config.data:
        return None
    return {
        "rope_type": "llama3",
        "factor": config.float("scale_factor", 8.0),
        "low_freq_factor": config.float("low_freq_factor", 1.0),
        "high_freq_factor": config.float("high_freq_factor", 4.0),
        "original_max_position_embeddings": config.int("old_context_len", 8192),
    }


def check_decoder(where: str, *, normalization: str, position_embedding: str, swiglu: bool, bias: bool) -> None:
    """Refuse Megatron models that are not SwiGLU + RMSNorm + RoPE decoders without linear biases (QKV biases are
    the family's to allow): one error naming the key."""
    problems = {
        "normalization": normalization.lower() != "rmsnorm" and normalization,
        "position_embedding_type": position_embedding != "rope" and position_embedding,
        "activation": not swiglu and "not SwiGLU",
        "bias": bias and "linear biases",
    }
    for key, value in problems.items():
        if value:
            raise user_error(f"{where}: {key}", f"'{shown(value)}' is not a decoder llm-launch converts",
                             "it converts SwiGLU + RMSNorm + RoPE decoders (Llama, Mistral, Qwen2/3, Mixtral)")


def model_arch(config: Fields, *, architecture: str, vocab_size: int, max_positions: int, dtype: str,
               parameters: int | None = None) -> ModelArch:
    """The architecture from the Megatron keys NeMo 1.0 and 2.0 configs share; callers give the rest."""
    heads, hidden = config.int("num_attention_heads"), config.int("hidden_size")
    experts = config.int("num_moe_experts", 0, minimum=0)
    ffn = config.int("ffn_hidden_size")
    return check_arch(ModelArch(
        architecture=architecture,
        num_layers=config.int("num_layers"),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_kv_heads=config.int("num_query_groups", heads),
        head_dim=config.int("kv_channels", max(hidden // heads, 1)),
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        rope_theta=config.float("rotary_base", 10000.0),
        rms_norm_eps=config.float("layernorm_epsilon", 1e-5),
        tie_word_embeddings=config.bool("share_embeddings_and_output_weights", False),
        rope_scaling=rope_scaling(config),
        dtype=dtype,
        parameters=parameters,
        num_experts=experts,
        experts_per_token=config.int("moe_router_topk", 2) if experts else 0,
        expert_intermediate_size=config.int("moe_ffn_hidden_size", ffn) if experts else None,
    ), config.where)


def count_parameters(metadata: Metadata) -> int | None:
    """Weights in a torch_dist checkpoint, from its metadata alone (the embedding's padded rows included)."""
    sizes = [meta.size for fqn, meta in metadata.state_dict_metadata.items()
             if isinstance(meta, TensorStorageMetadata) and "_extra_state" not in fqn]
    return sum(math.prod(size) for size in sizes) or None
