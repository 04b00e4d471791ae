"""The model families the launcher converts between formats, and the Hugging Face tensor names of each.

Serving needs no family: an HF checkpoint goes to an engine unconverted when that engine's table
(``architectures.json``) lists its architecture. A *conversion* (GGUF, NeMo or TensorRT-LLM weights <-> HF) needs to
know the family's tensors, which this table says: QKV biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3), Gemma's
``(1 + w)`` norms with pre/post feed-forward norms, and the two expert layouts (Mixtral's ``block_sparse_moe``,
Qwen3-MoE's ``mlp.experts``). Names are those of the files transformers writes (``save_pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import user_error
from launcher.spec import ModelArch


@dataclass(frozen=True)
class Family:
    architecture: str  # the HF causal-LM class, config.json architectures[0]
    model_type: str  # HF config.json model_type
    gguf_arch: str  # llama.cpp's general.architecture
    nemo_model: str  # NeMo 2.0's model class (the _target_ of context/model.yaml)
    qkv_bias: bool = False
    qk_norm: bool = False
    gemma: bool = False  # (1 + w) RMSNorm, sqrt(hidden) embedding scale, pre/post feed-forward norms
    moe: str | None = None  # "mixtral" (block_sparse_moe.experts.E.w1/w2/w3) | "qwen" (mlp.experts.E.*_proj)
    gguf_permutes_qk: bool = False  # llama.cpp's llama arch interleaves the rotary halves of q and k rows
    hidden_act: str = "silu"
    trtllm: bool = True  # a TensorRT-LLM checkpoint (engine runtime) can be written for it


FAMILIES: dict[str, Family] = {f.architecture: f for f in (
    Family("LlamaForCausalLM", "llama", "llama", "LlamaModel", gguf_permutes_qk=True),
    Family("MistralForCausalLM", "mistral", "llama", "MistralModel", gguf_permutes_qk=True),
    Family("Qwen2ForCausalLM", "qwen2", "qwen2", "Qwen2Model", qkv_bias=True),
    Family("Qwen3ForCausalLM", "qwen3", "qwen3", "Qwen3Model", qk_norm=True),
    Family("Gemma2ForCausalLM", "gemma2", "gemma2", "Gemma2Model", gemma=True, hidden_act="gelu_pytorch_tanh"),
    Family("Gemma3ForCausalLM", "gemma3_text", "gemma3", "Gemma3Model", gemma=True, qk_norm=True,
           hidden_act="gelu_pytorch_tanh"),
    Family("MixtralForCausalLM", "mixtral", "llama", "MixtralModel", moe="mixtral", gguf_permutes_qk=True),
    Family("Qwen3MoeForCausalLM", "qwen3_moe", "qwen3moe", "Qwen3Model", qk_norm=True, moe="qwen", trtllm=False),
)}
CONVERTIBLE = ", ".join(FAMILIES)


def family(arch: ModelArch, where: str, conversion: str) -> Family:
    """The family of ``arch`` for ``conversion`` (e.g. "converted from GGUF"), or one line saying it cannot be."""
    found = FAMILIES.get(arch.architecture)
    if found is None:
        raise user_error(where, f"{arch.architecture} cannot be {conversion} by llm-launch",
                         f"families it converts: {CONVERTIBLE}; serve an HF checkpoint of it unconverted instead")
    return found


# HF module (inside model.layers.N.) -> tensor leaves, by feature
_ATTENTION = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
              "self_attn.o_proj.weight")
_QKV_BIAS = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
_QK_NORM = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_DENSE = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_GEMMA_NORMS = ("pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")
EXPERT_LEAVES = {"mixtral": ("w1", "w2", "w3"), "qwen": ("gate_proj", "down_proj", "up_proj")}  # gate, down, up
ROUTER = {"mixtral": "block_sparse_moe.gate.weight", "qwen": "mlp.gate.weight"}
EXPERTS = {"mixtral": "block_sparse_moe.experts", "qwen": "mlp.experts"}


def layer_names(fam: Family, arch: ModelArch) -> list[str]:
    """The tensor names inside one decoder layer (``model.layers.N.`` left off), in transformers' order."""
    names = [_NORMS[0], *_ATTENTION[:3], *(_QKV_BIAS if fam.qkv_bias else ()), _ATTENTION[3],
             *(_QK_NORM if fam.qk_norm else ()), _NORMS[1], *(_GEMMA_NORMS if fam.gemma else ())]
    if fam.moe is None:
        return names + list(_DENSE)
    names.append(ROUTER[fam.moe])
    for expert in range(arch.num_experts):
        names += [f"{EXPERTS[fam.moe]}.{expert}.{leaf}.weight" for leaf in EXPERT_LEAVES[fam.moe]]
    return names


def hf_names(arch: ModelArch) -> list[str]:
    """Every weight an HF checkpoint of ``arch`` (a family of ``FAMILIES``) holds, in file order."""
    fam = family(arch, "model.checkpoint", "converted")
    names = ["model.embed_tokens.weight"]
    per_layer = layer_names(fam, arch)
    for layer in range(arch.num_layers):
        names += [f"model.layers.{layer}.{name}" for name in per_layer]
    names.append("model.norm.weight")
    if not arch.tie_word_embeddings:
        names.append("lm_head.weight")
    return names
