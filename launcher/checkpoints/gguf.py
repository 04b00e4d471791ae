"""GGUF file (llama.cpp): metadata for the architecture, tensors dequantized one at a time under HF names.

Tensor names come from llama.cpp's own table, shipped in the ``gguf`` package (``gguf.get_tensor_name_map``), so
the reader knows every family that table and ``families.FAMILIES`` both have. What llama.cpp's
``convert_hf_to_gguf.py`` does to the weights is undone here: the rotary-pair permutation of q/k rows (its
``llama`` architecture: Llama, Mistral, Mixtral), the ``+1`` folded into Gemma's norm weights, and the experts of
one layer stacked into one ``ffn_*_exps`` tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import Checkpoint, Fields, check_arch, damaged, reading
from launcher.checkpoints.families import FAMILIES, Family, hf_names
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch
    from gguf import GGUFReader

MAGIC = b"GGUF"
_DERIVED = {"rope_freqs.weight"}  # llama 3 rope factors: recomputed from the config, not weights
_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(\w+)")
GGUF_FAMILIES = sorted({f.gguf_arch for f in FAMILIES.values()})
GEMMA3_SLIDING_PATTERN = 6  # llama.cpp's default for gemma3 files without attention.sliding_window_pattern
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's local (sliding-window) rope base for gemma3


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs back to HF's rotated halves)."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _open(path: Path) -> GGUFReader:
    from gguf import GGUFReader

    with reading(path, "GGUF"):
        return GGUFReader(path)


def _metadata(reader: GGUFReader, path: Path) -> Fields:
    """Every scalar or string metadata value (arrays: only their length matters here, except a per-layer
    sliding-window pattern), typed-checked on use."""
    values: dict[str, Any] = {}
    with reading(path, "GGUF metadata"):
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            values[key] = len(field.data) if key == "tokenizer.ggml.tokens" else field.contents()
    return Fields(values, str(path))


def _family(meta: Fields, path: Path) -> Family:
    """The family of a GGUF: llama.cpp writes Llama, Mistral and Mixtral all as ``llama``."""
    gguf_arch = meta.str("general.architecture", "?")
    if gguf_arch == "llama":
        if meta.int("llama.expert_count", 0, minimum=0):
            return FAMILIES["MixtralForCausalLM"]
        return FAMILIES["MistralForCausalLM" if "mistral" in meta.str("general.name", "").lower()
                        else "LlamaForCausalLM"]
    found = [f for f in FAMILIES.values() if f.gguf_arch == gguf_arch]
    if not found:
        raise user_error(f"{path}: general.architecture", f"GGUF architecture '{gguf_arch}' cannot be converted "
                         "by llm-launch", f"GGUF architectures it converts: {', '.join(GGUF_FAMILIES)}")
    return found[0]


def _layer_types(meta: Fields, fam: Family, layers: int, window: int | None) -> list[str] | None:
    """Sliding/full per layer: the file's ``attention.sliding_window_pattern`` (a period, or one flag per layer),
    else llama.cpp's defaults for the Gemma families (every 2nd / 6th layer global)."""
    if window is None or not fam.gemma:
        return None
    key = f"{fam.gguf_arch}.attention.sliding_window_pattern"
    pattern = meta.data.get(key)
    if isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(flag, bool) for flag in pattern):
            raise meta.error(key, f"has {len(pattern)} entries; expected one true/false per layer ({layers})")
        return ["sliding_attention" if flag else "full_attention" for flag in pattern]
    period = meta.int(key, 2 if fam.gguf_arch == "gemma2" else GEMMA3_SLIDING_PATTERN)
    return ["sliding_attention" if (layer + 1) % period else "full_attention" for layer in range(layers)]


def arch_from_metadata(reader: GGUFReader, path: Path) -> ModelArch:
    """The architecture a GGUF's ``<arch>.*`` metadata describes."""
    meta = _metadata(reader, path)
    fam = _family(meta, path)
    a = fam.gguf_arch
    hidden, heads = meta.int(f"{a}.embedding_length"), meta.int(f"{a}.attention.head_count")
    layers = meta.int(f"{a}.block_count")
    head_dim = meta.int(f"{a}.attention.key_length", max(hidden // heads, 1))
    experts = meta.int(f"{a}.expert_count", 0, minimum=0) if fam.moe else 0
    window = meta.int(f"{a}.attention.sliding_window", None) if fam.gemma else None
    family_config: dict[str, Any] = {}
    if fam.gemma:
        family_config["query_pre_attn_scalar"] = head_dim  # llama.cpp scales queries by 1/sqrt(head_dim)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if f"{a}.{key}" in meta.data:
                family_config[key] = meta.float(f"{a}.{key}")
    if fam.gguf_arch == "gemma3":
        family_config["rope_local_base_freq"] = meta.float(f"{a}.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE)
    return check_arch(ModelArch(
        architecture=fam.architecture,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=meta.int(f"{a}.feed_forward_length"),
        num_attention_heads=heads,
        num_kv_heads=meta.int(f"{a}.attention.head_count_kv", heads),
        head_dim=head_dim,
        vocab_size=meta.int(meta.key(f"{a}.vocab_size", "tokenizer.ggml.tokens")),
        max_position_embeddings=meta.int(f"{a}.context_length", 4096),
        rope_theta=meta.float(f"{a}.rope.freq_base", 10000.0),
        rms_norm_eps=meta.float(f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        dtype="bfloat16",  # llama.cpp's quantized blocks dequantize to bf16 without loss of meaning
        parameters=sum(int(t.n_elements) for t in reader.tensors if t.name not in _DERIVED) or None,
        num_experts=experts,
        experts_per_token=meta.int(f"{a}.expert_used_count", 0, minimum=0) if experts else 0,
        expert_intermediate_size=meta.int(f"{a}.expert_feed_forward_length", None) if experts else None,
        sliding_window=window,
        layer_types=_layer_types(meta, fam, layers, window),
        family_config=family_config or None,
    ), str(path))


def gguf_names(arch: ModelArch) -> dict[str, list[tuple[str, int | None]]]:
    """llama.cpp tensor name -> the HF tensors it holds (with the expert index, for stacked experts), from the
    ``gguf`` package's own name map for the family's architecture."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    fam = FAMILIES[arch.architecture]
    names = get_tensor_name_map(next(k for k, v in MODEL_ARCH_NAMES.items() if v == fam.gguf_arch),
                                arch.num_layers)
    out: dict[str, list[tuple[str, int | None]]] = {}
    for hf in hf_names(arch):
        base, _, suffix = hf.rpartition(".")
        expert = None
        if match := _EXPERT.fullmatch(base):
            base, expert = f"{match[1]}.{match[3]}", int(match[2])
        gguf = names.get_name(base)
        assert gguf is not None, f"llama.cpp's map has no {base} for {fam.gguf_arch}"
        out.setdefault(f"{gguf}.{suffix}", []).append((hf, expert))
    return out


def _to_hf(hf: str, weight: torch.Tensor, arch: ModelArch, fam: Family) -> torch.Tensor:
    """Undo what llama.cpp's converter did to one HF tensor."""
    if fam.gguf_permutes_qk and hf.endswith(("q_proj.weight", "k_proj.weight")):
        return unpermute(weight, arch.num_attention_heads if ".q_proj." in hf else arch.num_kv_heads)
    if fam.gemma and hf.endswith("norm.weight"):
        return weight - 1
    return weight


def _tensors(path: Path, arch: ModelArch) -> Iterator[tuple[str, torch.Tensor]]:
    import numpy as np
    import torch
    from gguf.quants import dequantize

    fam = FAMILIES[arch.architecture]
    names = gguf_names(arch)
    reader = _open(path)
    for tensor in reader.tensors:
        if tensor.name in _DERIVED:
            continue
        if tensor.name not in names:
            raise damaged(path, f"unexpected tensor '{tensor.name}' for {arch.architecture}")
        with reading(path, f"GGUF tensor {tensor.name}"):
            weight = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        for hf, expert in names[tensor.name]:
            yield hf, _to_hf(hf, weight if expert is None else weight[expert], arch, fam)


def read(path: Path) -> Checkpoint:
    arch = arch_from_metadata(_open(path), path)
    return Checkpoint(path=path, format="gguf", arch=arch, tokenizer=path, stream=lambda: _tensors(path, arch))
