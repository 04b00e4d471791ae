"""Write a TensorRT-LLM checkpoint (``config.json`` + ``rank{N}.safetensors``) of a family the engine runtime builds.

Layout from shared/formats.md B: per rank ``r = pp_rank * tp + tp_rank`` one safetensors file holding
that rank's slice of its pipeline stage's layers (local layer indices); ``attention.qkv`` is the plain
concatenation of q, k and v slices (KV heads repeated when fewer than ``tp``), its bias likewise (Qwen2);
``mlp.fc`` is HF ``gate_proj`` (the activated branch) and ``mlp.gate`` is HF ``up_proj``; ``attention.dense`` and
``mlp.proj`` split on dim 1; ``lm_head`` is zero-padded to a multiple of ``tp`` rows and split. Family parts, as
TensorRT-LLM's own converters write them (``models/qwen/convert.py``, ``models/gemma/convert.py``,
``models/llama/convert.py``) and ModelOpt 0.37 wrote the Mixtral fixture: Qwen3's ``attention.q_layernorm`` /
``k_layernorm``; Gemma's norms with the ``+1`` folded in (``pre_feedforward_layernorm``,
``post_feedforward_layernorm`` beside ``post_layernorm``); Mixtral's ``mlp.router`` (float32), ``mlp.fc``
``[experts, up + gate, hidden]`` (``cat(w3, w1)`` per expert) and ``mlp.proj`` ``[experts, hidden, ffn]``.

Tensors stream in from any checkpoint reader (``Checkpoint.tensors()``, HF names) and go out as they
arrive; only one layer's q/k/v wait for each other, so memory stays near one layer.

FP8 (an HF checkpoint with ``float8_e4m3fn`` weights and ModelOpt's per-tensor ``weight_scale`` /
``input_scale`` / ``k_scale`` / ``v_scale``) is written as TensorRT-LLM's FP8 layout: scales become
``weights_scaling_factor`` / ``activation_scaling_factor`` / ``attention.kv_cache_scaling_factor``, and
q/k/v are re-quantized to their largest scale so the fused ``qkv`` has one. These FP8 names follow
TensorRT-LLM's documentation and ModelOpt's exporter; they were not checked against a real engine build.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import DTYPE_BYTES, Checkpoint, TensorStream
from launcher.checkpoints.families import EXPERT_LEAVES, FAMILIES, ROUTER, Family
from launcher.convert.hf_writer import hf_tensors, resolve_dtype
from launcher.convert.progress import Progress
from launcher.convert.shards import ShardWriter
from launcher.convert.streams import ahead
from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_SCALES = {"weight_scale": "weights_scaling_factor", "input_scale": "activation_scaling_factor"}
# HF module inside a layer -> (TensorRT-LLM module, split dim: 0 column-parallel, 1 row-parallel, None replicated)
_MODULES = {
    "input_layernorm": ("input_layernorm", None),
    "post_attention_layernorm": ("post_layernorm", None),
    "pre_feedforward_layernorm": ("pre_feedforward_layernorm", None),
    "post_feedforward_layernorm": ("post_feedforward_layernorm", None),
    "self_attn.q_norm": ("attention.q_layernorm", None),
    "self_attn.k_norm": ("attention.k_layernorm", None),
    "self_attn.o_proj": ("attention.dense", 1),
    "mlp.gate_proj": ("mlp.fc", 0),
    "mlp.up_proj": ("mlp.gate", 0),
    "mlp.down_proj": ("mlp.proj", 1),
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
TRTLLM_FAMILIES = ", ".join(name for name, fam in FAMILIES.items() if fam.trtllm)
_EXPERT = re.compile(r"(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight")
FP8 = "float8_e4m3fn"
MOE_RENORMALIZE = 1  # TensorRT-LLM MoeConfig.ExpertScaleNormalizationMode.RENORMALIZE (Mixtral's top-k softmax)


def pad_vocab(vocab: int, tp: int) -> int:
    """Rows of ``lm_head`` after padding: the next multiple of ``tp``."""
    return -(-vocab // tp) * tp


def pipeline_stages(num_layers: int, pp: int) -> list[range]:
    """Global layers of each stage, as ``torch.tensor_split(arange(n), pp)`` (extra layers go first)."""
    base, extra = divmod(num_layers, pp)
    starts = [stage * base + min(stage, extra) for stage in range(pp + 1)]
    return [range(starts[s], starts[s + 1]) for s in range(pp)]


def family_config(arch: ModelArch, fam: Family) -> dict[str, Any]:
    """The keys TensorRT-LLM's config class of the family adds (QWenConfig, GemmaConfig, LLaMAConfig's moe)."""
    extra = dict(arch.family_config or {})
    if fam.model_type.startswith("qwen"):
        return {"qwen_type": fam.model_type, "attn_bias": fam.qkv_bias}
    if fam.gemma:
        config = {"query_pre_attn_scalar": extra.get("query_pre_attn_scalar", arch.head_dim),
                  "final_logit_softcapping": extra.get("final_logit_softcapping"), "inter_layernorms": True}
        if fam.model_type == "gemma2":
            return config | {"attn_logit_softcapping": extra.get("attn_logit_softcapping")}
        kinds = arch.layer_types or []
        pattern = kinds.index("full_attention") + 1 if "full_attention" in kinds else len(kinds) + 1
        return config | {"_sliding_window_pattern": pattern, "sliding_window": arch.sliding_window,
                         "rope_local_base_freq": extra.get("rope_local_base_freq", 10000.0)}
    if fam.moe:
        return {"moe": {"num_experts": arch.num_experts, "top_k": arch.experts_per_token,
                        "normalization_mode": MOE_RENORMALIZE}}
    return {}


def trtllm_config(arch: ModelArch, dtype: str, tp: int, pp: int, quantization: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` as the family's ``PretrainedConfig.to_dict`` writes it (formats.md B.2)."""
    fam = FAMILIES[arch.architecture]
    return {
        "architecture": arch.architecture,
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_size": arch.head_dim,
        "intermediate_size": arch.expert_intermediate_size or arch.intermediate_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "hidden_act": "swiglu" if fam.moe else fam.hidden_act,
        "norm_epsilon": arch.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_embedding_dim": arch.head_dim,
        "rotary_base": arch.rope_theta,
        "rotary_scaling": arch.rope_scaling,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "mlp_bias": False,
        "attn_bias": fam.qkv_bias,
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp, "cp_size": 1,
                    "moe_tp_size": tp, "moe_ep_size": 1, "moe_cluster_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128,
                         "smoothquant_val": 0.5, "clamp_val": None, "use_meta_recipe": False,
                         "has_zero_point": False, "pre_quant_scale": False, "exclude_modules": None,
                         **quantization},
        **family_config(arch, fam),
    }


class _Ranks:
    """One open ``rank{r}.safetensors`` per rank; tensors are written the moment they are added."""

    def __init__(self, out_dir: Path, tp: int, pp: int) -> None:
        self.out_dir, self.tp, self.pp = out_dir, tp, pp
        self.writers = [ShardWriter(out_dir, max_shard_bytes=2**62, prefix=f"rank{r}") for r in range(tp * pp)]

    def add(self, stage: int, name: str, shards: list[torch.Tensor] | torch.Tensor) -> None:
        """``shards``: one tensor per tensor-parallel rank, or one tensor every rank of the stage gets."""
        for tp_rank in range(self.tp):
            tensor = shards[tp_rank] if isinstance(shards, list) else shards
            self.writers[stage * self.tp + tp_rank].add(name, tensor.contiguous())

    def finish(self) -> None:
        """Close every file and give it its final name (``rank{r}.safetensors``, no index)."""
        for r, writer in enumerate(self.writers):
            writer.finish()
            (shard,) = self.out_dir.glob(f"rank{r}-*-of-*.safetensors")
            os.replace(shard, self.out_dir / f"rank{r}.safetensors")
            (self.out_dir / f"rank{r}.safetensors.index.json").unlink()


def _split(tensor: torch.Tensor, dim: int | None, tp: int) -> list[torch.Tensor] | torch.Tensor:
    if dim is None or tensor.dim() <= dim or tensor.numel() == 1:
        return tensor  # replicated: norms and per-tensor scales
    import torch

    if tensor.shape[dim] % tp:
        raise user_error("backend.tensor_parallel", f"dimension {tensor.shape[dim]} does not split {tp} ways",
                         "use a tensor_parallel that divides the model's sizes")
    return list(torch.chunk(tensor, tp, dim=dim))


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    """FP8 tensors travel as uint8 through cat/chunk/repeat (not every op has an fp8 kernel)."""
    import torch

    return tensor.view(torch.uint8) if str(tensor.dtype).endswith(FP8) else tensor


class _Writer:
    def __init__(self, arch: ModelArch, ranks: _Ranks, kv_cache_fp8: bool) -> None:
        self.arch, self.ranks, self.tp, self.kv_cache_fp8 = arch, ranks, ranks.tp, kv_cache_fp8
        self.fam = FAMILIES[arch.architecture]
        stages = pipeline_stages(arch.num_layers, ranks.pp)
        self.stage_of = {layer: (s, layer - stages[s].start) for s, layer_range in enumerate(stages)
                         for layer in layer_range}
        self.last = ranks.pp - 1
        self.pending: dict[int, dict[str, torch.Tensor]] = {}  # layer -> q/k/v (and their scales) so far
        self.experts: dict[int, dict[tuple[int, str], torch.Tensor]] = {}  # layer -> (expert, leaf) -> weight

    def _norm(self, tensor: torch.Tensor) -> torch.Tensor:
        """Gemma's RMSNorm scales by ``1 + w``; TensorRT-LLM's by its weight, so the 1 is folded in."""
        return (tensor.float() + 1).to(tensor.dtype) if self.fam.gemma else tensor

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name == "model.embed_tokens.weight":
            self.ranks.add(0, "transformer.vocab_embedding.weight", tensor)
            if self.arch.tie_word_embeddings:
                self._lm_head(tensor)
        elif name == "lm_head.weight":
            self._lm_head(tensor)
        elif name == "model.norm.weight":
            self.ranks.add(self.last, "transformer.ln_f.weight", self._norm(tensor))
        elif match := _LAYER.fullmatch(name):
            self._layer(int(match[1]), match[2], tensor)
        else:
            raise user_error(name, f"is not a tensor of {self.arch.architecture}",
                             "the checkpoint's weights do not match its config")

    def _lm_head(self, tensor: torch.Tensor) -> None:
        import torch

        rows = pad_vocab(tensor.shape[0], self.tp) - tensor.shape[0]
        padded = torch.cat([tensor, tensor.new_zeros(rows, tensor.shape[1])]) if rows else tensor
        self.ranks.add(self.last, "lm_head.weight", _split(padded, 0, self.tp))

    def _layer(self, layer: int, rest: str, tensor: torch.Tensor) -> None:
        if layer not in self.stage_of:
            raise user_error(f"model.layers.{layer}", f"the model has {self.arch.num_layers} layers",
                             "the checkpoint does not match its config")
        stage, local = self.stage_of[layer]
        prefix = f"transformer.layers.{local}."
        module, _, leaf = rest.rpartition(".")
        if module in _QKV or rest in ("self_attn.k_proj.k_scale", "self_attn.v_proj.v_scale"):
            pending = self.pending.setdefault(layer, {})
            pending[rest] = tensor
            self._flush_attention(layer, stage, prefix)
            return
        if self.fam.moe and (match := _EXPERT.fullmatch(rest)):
            self.experts.setdefault(layer, {})[int(match[1]), match[2]] = tensor
            self._flush_experts(layer, stage, prefix)
            return
        if self.fam.moe and rest == ROUTER[self.fam.moe]:
            self.ranks.add(stage, prefix + "mlp.router.weight", tensor.float())  # the router stays float32
            return
        if module not in _MODULES or leaf not in ("weight", *_SCALES):
            raise user_error(f"model.layers.{layer}.{rest}", f"is not a tensor of {self.arch.architecture}",
                             "the checkpoint's weights do not match its config")
        target, dim = _MODULES[module]
        if leaf == "weight":
            if dim is None:
                self.ranks.add(stage, prefix + f"{target}.weight", self._norm(tensor))
                return
            shards = _split(_raw(tensor), dim, self.tp)
            shards = [s.view(tensor.dtype) for s in shards] if isinstance(shards, list) else tensor
            self.ranks.add(stage, prefix + f"{target}.weight", shards)
        else:
            self.ranks.add(stage, prefix + f"{target}.{_SCALES[leaf]}", tensor.float().reshape(1))

    def _flush_experts(self, layer: int, stage: int, prefix: str) -> None:
        """Once a layer's experts are all there: ``mlp.fc`` = per expert ``cat(up, gate)`` split along the FFN
        width for each rank (TensorRT-LLM's MoE tensor parallelism), ``mlp.proj`` = down split likewise."""
        import torch

        found = self.experts[layer]
        gate, down, up = EXPERT_LEAVES[self.fam.moe or ""]
        if len(found) < 3 * self.arch.num_experts:
            return
        try:
            stacked = {leaf: torch.stack([found[e, leaf] for e in range(self.arch.num_experts)])
                       for leaf in (gate, down, up)}
        except KeyError as missing:
            raise user_error(f"model.layers.{layer}", f"expert weight {missing} is missing",
                             "the checkpoint is incomplete; re-export it") from None
        ups, gates = (_split(stacked[leaf], 1, self.tp) for leaf in (up, gate))
        ups, gates = (x if isinstance(x, list) else [x] * self.tp for x in (ups, gates))
        self.ranks.add(stage, prefix + "mlp.fc.weight", [torch.cat([u, g], dim=1) for u, g in zip(ups, gates,
                                                                                                   strict=True)])
        self.ranks.add(stage, prefix + "mlp.proj.weight", _split(stacked[down], 2, self.tp))
        del self.experts[layer]

    def _flush_attention(self, layer: int, stage: int, prefix: str) -> None:
        """Write the fused qkv once q, k and v (their biases, and for FP8 their scales) are all there."""
        import torch

        pending = self.pending[layer]
        weights = [pending.get(f"{m}.weight") for m in _QKV]
        biases = [pending.get(f"{m}.bias") for m in _QKV] if self.fam.qkv_bias else []
        if any(w is None for w in [*weights, *biases]):
            return
        fp8 = str(weights[0].dtype).endswith(FP8)
        scale_names = [f"{m}.{s}" for m in _QKV for s in _SCALES] if fp8 else []
        kv_names = ["self_attn.k_proj.k_scale", "self_attn.v_proj.v_scale"]
        if any(n not in pending for n in scale_names) or (
                any(n in pending for n in kv_names) and not all(n in pending for n in kv_names)):
            return
        if fp8:
            scales = [pending[f"{m}.weight_scale"].float().reshape(()) for m in _QKV]
            common = torch.stack(scales).max()
            weights = [(w.float() * s / common).to(w.dtype) for w, s in zip(weights, scales, strict=True)]
            activation = torch.stack([pending[f"{m}.input_scale"].float().reshape(()) for m in _QKV]).max()
            self.ranks.add(stage, prefix + "attention.qkv.weights_scaling_factor", common.reshape(1))
            self.ranks.add(stage, prefix + "attention.qkv.activation_scaling_factor", activation.reshape(1))
        if all(n in pending for n in kv_names):
            kv_scale = torch.stack([pending[n].float().reshape(()) for n in kv_names]).max()
            self.ranks.add(stage, prefix + "attention.kv_cache_scaling_factor", kv_scale.reshape(1))
        elif self.kv_cache_fp8:  # no calibrated KV scales in the checkpoint: 1.0, as an uncalibrated export
            self.ranks.add(stage, prefix + "attention.kv_cache_scaling_factor", torch.ones(1))
        self.ranks.add(stage, prefix + "attention.qkv.weight", [s.view(weights[0].dtype)
                                                                for s in self._fused(weights)])
        if biases:
            self.ranks.add(stage, prefix + "attention.qkv.bias", self._fused(biases))
        del self.pending[layer]

    def _fused(self, qkv: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each rank's ``cat(q, k, v)`` slices (weights or biases); KV heads repeated when fewer than ``tp``."""
        import torch

        q, k, v = (_raw(t) for t in qkv)
        kv_heads, head_dim = self.arch.num_kv_heads, self.arch.head_dim
        if kv_heads < self.tp:  # each rank needs whole KV heads: repeat every head tp / kv_heads times
            k, v = (t.reshape(kv_heads, head_dim, *t.shape[1:]).repeat_interleave(self.tp // kv_heads, dim=0)
                    .reshape(-1, *t.shape[1:]) for t in (k, v))
        parts = [_split(t, 0, self.tp) for t in (q, k, v)]
        parts = [p if isinstance(p, list) else [p] * self.tp for p in parts]
        return [torch.cat(ranks) for ranks in zip(*parts, strict=True)]

    def finish(self) -> None:
        pending = {**{layer: sorted(names) for layer, names in self.pending.items()},
                   **{layer: ["experts"] for layer in self.experts}}
        if pending:
            layer = min(pending)
            raise user_error(f"model.layers.{layer}.self_attn", f"incomplete: only {pending[layer]}",
                             "the checkpoint is missing attention or expert weights; re-export it")


def writable(arch: ModelArch) -> bool:
    """Whether llm-launch writes a TensorRT-LLM checkpoint of ``arch``'s family."""
    fam = FAMILIES.get(arch.architecture)
    return fam is not None and fam.trtllm


def write_trtllm(tensors: Iterable[tuple[str, torch.Tensor]], arch: ModelArch, out_dir: Path, *, dtype: str,
                 tp: int = 1, pp: int = 1, quantization: dict[str, Any] | None = None) -> Path:
    """Write HF-named ``tensors`` of ``arch`` as a TensorRT-LLM checkpoint split ``tp`` x ``pp`` ways."""
    if not writable(arch):
        raise user_error("backend.runtime", f"llm-launch cannot write a TensorRT-LLM checkpoint of "
                         f"{arch.architecture}", f"use backend.runtime=llmapi (families it writes: {TRTLLM_FAMILIES})")
    if arch.num_kv_heads < tp and tp % arch.num_kv_heads:
        raise user_error("backend.tensor_parallel", f"{arch.num_kv_heads} KV heads cannot be repeated evenly "
                         f"over tensor_parallel={tp}", f"use a multiple of {arch.num_kv_heads}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _Ranks(out_dir, tp, pp)
    writer = _Writer(arch, ranks, kv_cache_fp8=(quantization or {}).get("kv_cache_quant_algo") == "FP8")
    total = (arch.parameters or 0) * DTYPE_BYTES.get(dtype, 2) or None
    with Progress(f"write TensorRT-LLM checkpoint (tp={tp}, pp={pp})", total) as progress:
        for name, tensor in ahead(tensors):
            writer.add(name, tensor)
            progress.advance(tensor.numel() * tensor.element_size(), 1)
    writer.finish()
    ranks.finish()
    config = trtllm_config(arch, dtype, tp, pp, quantization or {})
    (out_dir / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    return out_dir


def _fp8_tensors(checkpoint: Checkpoint, dtype: torch.dtype) -> TensorStream:
    """The checkpoint's tensors with FP8 weights and float32 scales kept as they are, the rest cast."""
    for name, tensor in checkpoint.tensors():
        keep = str(tensor.dtype).endswith(FP8) or name.endswith(("_scale", "k_scale", "v_scale"))
        yield name, tensor if keep else tensor.to(dtype)


def to_trtllm(checkpoint: Checkpoint, out_dir: Path, *, dtype: str = "auto", tp: int = 1, pp: int = 1,
              quant_algo: str | None = None, kv_cache: str = "auto") -> Path:
    """Convert ``checkpoint`` (any format with HF-named tensors) into a TensorRT-LLM checkpoint.

    ``quant_algo`` ``FP8`` (the checkpoint's own quantization) keeps its FP8 weights and scales; any other
    quantized checkpoint is refused. ``kv_cache`` ``fp8`` marks the KV cache FP8 (with the checkpoint's KV
    scales when it has them, else 1.0).
    """
    if quant_algo not in (None, "FP8"):
        raise user_error("model.checkpoint", f"{quant_algo} weights cannot be written as a TensorRT-LLM checkpoint "
                         "here", "serve it with backend.runtime=llmapi")
    torch_dtype = resolve_dtype(dtype, checkpoint.arch)
    fp8 = quant_algo == "FP8"
    quantization = {"quant_algo": quant_algo, "kv_cache_quant_algo": "FP8" if kv_cache == "fp8" else None}
    stream = _fp8_tensors(checkpoint, torch_dtype) if fp8 else hf_tensors(checkpoint, torch_dtype)
    return write_trtllm(stream, checkpoint.arch, out_dir, dtype=str(torch_dtype).removeprefix("torch."),
                        tp=tp, pp=pp, quantization=quantization)
