"""GGUF file (llama.cpp): metadata for the architecture, tensors dequantized one at a time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import Checkpoint, Fields, TensorStream, check_arch, reading
from launcher.checkpoints.hf import check_architecture
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch
    from gguf import GGUFReader

MAGIC = b"GGUF"
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_IN_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_DERIVED = {"rope_freqs.weight"}  # llama 3 rope factors: recomputed from the config, not weights


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def hf_name(gguf_name: str) -> str | None:
    """The HF name of a llama.cpp tensor (``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``)."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    match = _BLOCK.fullmatch(gguf_name)
    if match and match[2] in _IN_BLOCK:
        return f"model.layers.{match[1]}.{_IN_BLOCK[match[2]]}.{match[3]}"
    return None


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs back to HF's rotated halves)."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _open(path: Path) -> GGUFReader:
    from gguf import GGUFReader

    with reading(path, "GGUF"):
        return GGUFReader(path)


def _metadata(reader: GGUFReader, path: Path) -> Fields:
    """Every scalar or string metadata value (arrays: only their length matters here), typed-checked on use."""
    values: dict[str, Any] = {}
    with reading(path, "GGUF metadata"):
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            values[key] = len(field.data) if key == "tokenizer.ggml.tokens" else field.contents()
    return Fields(values, str(path))


def arch_from_metadata(reader: GGUFReader, path: Path) -> ModelArch:
    """The architecture a GGUF's ``<arch>.*`` metadata describes (llama.cpp writes Mistral as ``llama``)."""
    meta = _metadata(reader, path)
    gguf_arch = meta.str("general.architecture", "?")
    name = meta.str("general.name", "").lower()
    architecture = {"llama": "MistralForCausalLM" if "mistral" in name else "LlamaForCausalLM"}.get(
        gguf_arch, f"{gguf_arch} (GGUF)")
    check_architecture(architecture, str(path))
    hidden, heads = meta.int(f"{gguf_arch}.embedding_length"), meta.int(f"{gguf_arch}.attention.head_count")
    return check_arch(ModelArch(
        architecture=architecture,
        num_layers=meta.int(f"{gguf_arch}.block_count"),
        hidden_size=hidden,
        intermediate_size=meta.int(f"{gguf_arch}.feed_forward_length"),
        num_attention_heads=heads,
        num_kv_heads=meta.int(f"{gguf_arch}.attention.head_count_kv", heads),
        head_dim=meta.int(f"{gguf_arch}.attention.key_length", max(hidden // heads, 1)),
        vocab_size=meta.int(meta.key(f"{gguf_arch}.vocab_size", "tokenizer.ggml.tokens")),
        max_position_embeddings=meta.int(f"{gguf_arch}.context_length", 4096),
        rope_theta=meta.float(f"{gguf_arch}.rope.freq_base", 10000.0),
        rms_norm_eps=meta.float(f"{gguf_arch}.attention.layer_norm_rms_epsilon", 1e-5),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        dtype="bfloat16",  # llama.cpp's quantized blocks dequantize to bf16 without loss of meaning
    ), str(path))


def _tensors(path: Path, arch: ModelArch) -> TensorStream:
    import numpy as np
    import torch
    from gguf.quants import dequantize

    reader = _open(path)
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            if tensor.name in _DERIVED:
                continue
            raise user_error(str(path), f"unexpected tensor '{tensor.name}'", "only Llama-family GGUFs are supported")
        with reading(path, f"GGUF tensor {tensor.name}"):
            weight = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        if ".q_proj." in name:
            weight = unpermute(weight, arch.num_attention_heads)
        elif ".k_proj." in name:
            weight = unpermute(weight, arch.num_kv_heads)
        yield name, weight


def read(path: Path) -> Checkpoint:
    arch = arch_from_metadata(_open(path), path)
    return Checkpoint(path=path, format="gguf", arch=arch, tokenizer=path, stream=lambda: _tensors(path, arch))
