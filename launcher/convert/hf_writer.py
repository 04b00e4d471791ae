"""Write a checkpoint as a Hugging Face Llama-family directory, streaming tensor by tensor."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import Checkpoint, TensorStream
from launcher.convert.shards import DEFAULT_SHARD_BYTES, ShardWriter
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)
_BUFFERS = re.compile(r".*\.rotary_emb\.inv_freq$")  # saved by old transformers versions; not weights
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}


def hf_names(arch: ModelArch) -> list[str]:
    """Every weight name an HF checkpoint of ``arch`` holds, in file order."""
    names = ["model.embed_tokens.weight"]
    for layer in range(arch.num_layers):
        names += [f"model.layers.{layer}.{t}" for t in LAYER_TENSORS]
    names.append("model.norm.weight")
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def resolve_dtype(dtype: str | torch.dtype, arch: ModelArch) -> torch.dtype:
    """``auto`` (the checkpoint's own dtype) or a name like ``bfloat16`` as a ``torch.dtype``."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = arch.dtype if dtype == "auto" else dtype
    resolved = getattr(torch, name, None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise user_error("precision.weights", f"'{name}' is not a floating-point dtype",
                         "use float32, bfloat16 or float16")
    return resolved


def hf_tensors(checkpoint: Checkpoint, dtype: torch.dtype) -> TensorStream:
    """The checkpoint's tensors under HF names, cast to ``dtype``, checked against the architecture.

    The stream other writers (e.g. a TensorRT-LLM checkpoint writer) can consume as well.
    """
    if checkpoint.format == "qnemo":
        raise user_error("model.checkpoint", "a .qnemo holds TensorRT-LLM weights, not Hugging Face ones",
                         "serve it with backend=trtllm backend.runtime=engine")
    expected = set(hf_names(checkpoint.arch))
    seen = set()
    for name, tensor in checkpoint.tensors():
        if (name == "lm_head.weight" and checkpoint.arch.tie_word_embeddings) or _BUFFERS.match(name):
            continue
        if name not in expected:
            raise user_error(str(checkpoint.path), f"unexpected tensor '{name}' for {checkpoint.arch.architecture}",
                             "only Llama-family weights without biases can be converted")
        seen.add(name)
        yield name, tensor.to(dtype)
    if missing := sorted(expected - seen, key=hf_names(checkpoint.arch).index):
        raise user_error(str(checkpoint.path), f"{len(missing)} tensors missing, e.g. '{missing[0]}'",
                         "the checkpoint is incomplete; re-export it")


def hf_config(arch: ModelArch, dtype: torch.dtype, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """``config.json`` for ``arch`` stored in ``dtype``."""
    config: dict[str, Any] = {
        "architectures": [arch.architecture],
        "model_type": _MODEL_TYPES[arch.architecture],
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_theta": arch.rope_theta,
        "rope_scaling": arch.rope_scaling,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **special_ids,
    }
    if arch.architecture == "MistralForCausalLM":
        config["sliding_window"] = None
    return config


def _sentencepiece_tokenizer(model: Path):
    """An HF Llama tokenizer built from a sentencepiece ``.model`` (vocabulary, scores -> BPE merges).

    Read with the ``sentencepiece`` library itself: transformers' own path parses the model's protobuf,
    which needs a protobuf runtime at least as new as the one it was generated with.
    """
    import sentencepiece
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: sp.get_score(i) for i, piece in enumerate(pieces)})
    special = {name: sp.id_to_piece(i) if i >= 0 else None
               for name, i in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()))}
    return LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, **special)


def save_tokenizer(source: Path, out_dir: Path) -> dict[str, int | None]:
    """Save the tokenizer at ``source`` (HF dir, .gguf file or sentencepiece .model) as HF files.

    Returns its ``bos_token_id``/``eos_token_id``/``pad_token_id`` for the model's configs.
    """
    from transformers import AutoTokenizer

    if source.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    elif source.suffix == ".model":
        tokenizer = _sentencepiece_tokenizer(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(out_dir)
    return {key: getattr(tokenizer, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}


def to_hf(checkpoint: Checkpoint, out_dir: Path, dtype: str | torch.dtype = "auto",
          max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``checkpoint`` as an HF directory that ``AutoModelForCausalLM.from_pretrained`` loads offline.

    Tensors are read, cast and written one at a time, so peak memory is about the largest tensor.
    """
    torch_dtype = resolve_dtype(dtype, checkpoint.arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    special_ids = save_tokenizer(checkpoint.tokenizer, out_dir) if checkpoint.tokenizer else {}
    with ShardWriter(out_dir, max_shard_bytes) as shards:
        for name, tensor in hf_tensors(checkpoint, torch_dtype):
            shards.add(name, tensor)
    config = hf_config(checkpoint.arch, torch_dtype, special_ids)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {key: value for key, value in special_ids.items() if value is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out_dir
