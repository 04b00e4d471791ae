"""Write a checkpoint as a Hugging Face directory: an HF one in another dtype, or a converted one of a family."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import Checkpoint, TensorStream
from launcher.checkpoints.families import FAMILIES, hf_names
from launcher.convert.copy import copy_files, copy_hf
from launcher.convert.progress import Progress
from launcher.convert.shards import DEFAULT_SHARD_BYTES, ShardWriter
from launcher.convert.streams import ahead
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

_BUFFERS = re.compile(r".*\.rotary_emb\.inv_freq$")  # saved by old transformers versions; not weights


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
    """The tensors of a converted checkpoint (GGUF, NeMo) under the HF names of its family, cast to ``dtype``,
    checked against the architecture: the stream the HF and TensorRT-LLM writers consume."""
    if checkpoint.format == "qnemo":
        raise user_error("model.checkpoint", "a .qnemo holds TensorRT-LLM weights, not Hugging Face ones",
                         "serve it with backend=trtllm backend.runtime=engine")
    arch = checkpoint.arch
    order = hf_names(arch)
    expected = set(order)
    seen = set()
    for name, tensor in checkpoint.tensors():
        if (name == "lm_head.weight" and arch.tie_word_embeddings) or _BUFFERS.match(name):
            continue
        if name not in expected:
            raise user_error(str(checkpoint.path), f"unexpected tensor '{name}' for {arch.architecture}",
                             "the checkpoint's weights do not match its config; re-export it")
        seen.add(name)
        yield name, tensor if tensor.dtype == dtype else tensor.to(dtype)
    if missing := sorted(expected - seen, key=order.index):
        raise user_error(str(checkpoint.path), f"{len(missing)} tensors missing, e.g. '{missing[0]}'",
                         "the checkpoint is incomplete; re-export it")


def hf_config(arch: ModelArch, dtype: torch.dtype, special_ids: dict[str, int | None]) -> dict[str, Any]:
    """``config.json`` for ``arch`` (a family of ``FAMILIES``) stored in ``dtype``, in the keys of the family's
    transformers config class."""
    fam = FAMILIES[arch.architecture]
    config: dict[str, Any] = {
        "architectures": [arch.architecture],
        "model_type": fam.model_type,
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
        "hidden_act": fam.hidden_act,
        "attention_bias": fam.qkv_bias,
        "mlp_bias": False,
        "sliding_window": arch.sliding_window,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **special_ids,
    }
    if fam.gemma:
        config["hidden_activation"] = fam.hidden_act
    if arch.layer_types is not None:
        config["layer_types"] = arch.layer_types
    if fam.model_type in ("qwen2", "qwen3", "qwen3_moe"):
        config["use_sliding_window"] = arch.sliding_window is not None
    if fam.moe == "mixtral":
        config |= {"num_local_experts": arch.num_experts, "num_experts_per_tok": arch.experts_per_token,
                   "intermediate_size": arch.expert_intermediate_size or arch.intermediate_size}
    elif fam.moe == "qwen":
        config |= {"num_experts": arch.num_experts, "num_experts_per_tok": arch.experts_per_token,
                   "moe_intermediate_size": arch.expert_intermediate_size or arch.intermediate_size,
                   "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []}
    return config | (arch.family_config or {})


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

    An HF checkpoint of any architecture keeps its files and tensor names; only its floating weights change dtype
    (safetensors: byte ranges copied or cast in chunks, ``launcher.convert.copy``). Another format is converted
    through its family's HF names, one tensor at a time, the next read while this one is written.
    """
    torch_dtype = resolve_dtype(dtype, checkpoint.arch)
    if checkpoint.format == "hf" and checkpoint.safetensors:
        return copy_hf(checkpoint, out_dir, torch_dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint.format == "hf":  # pickled weights: no byte ranges to copy
        copy_files(checkpoint.path, out_dir, str(torch_dtype).removeprefix("torch."))
        tensors: TensorStream = ((name, t.to(torch_dtype) if t.is_floating_point() else t)
                                 for name, t in checkpoint.tensors())
        count = None
    else:
        special_ids = save_tokenizer(checkpoint.tokenizer, out_dir) if checkpoint.tokenizer else {}
        config = hf_config(checkpoint.arch, torch_dtype, special_ids)
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {key: value for key, value in special_ids.items() if value is not None}
        (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        tensors, count = hf_tensors(checkpoint, torch_dtype), len(hf_names(checkpoint.arch))
    total = (checkpoint.arch.parameters or 0) * torch_dtype.itemsize or None
    with Progress(f"convert {checkpoint.path.name} ({checkpoint.format}) -> HF", total, count) as progress, \
            ShardWriter(out_dir, max_shard_bytes) as shards:
        for name, tensor in ahead(tensors):
            shards.add(name, tensor)
            progress.advance(tensor.numel() * tensor.element_size(), 1)
    return out_dir
