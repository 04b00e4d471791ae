"""Memory estimates for any family: weights and a full KV cache per GPU (or per host on CPU).

Weights: the parameter count read from the checkpoint's tensor headers (safetensors, GGUF, NeMo metadata) where the
weights are here, else estimated from the architecture's sizes (dense or mixture-of-experts). KV cache: per layer,
K and V of each KV head (or MLA's one latent vector), for the whole sequence or, on a sliding-window layer, at most
the window. A decode step reads every weight once (a MoE model: the shared ones and the active experts).
"""

from __future__ import annotations

from launcher.deployment import Deployment
from launcher.plan import Estimate
from launcher.spec import ModelArch

GIB = 1024**3
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, "fp8": 1, "int8": 1, "int4": 0.5}
BYTES_PER_QUANT_ALGO = {"FP8": 1, "W8A8_SQ_PER_CHANNEL": 1, "INT8": 1, "W4A16_AWQ": 0.5}  # a quantized checkpoint's
BYTES_PER_KV = {"auto": 2, "fp8": 1, "int8": 1}


def expert_parameters(arch: ModelArch) -> int:
    """Weights of one routed expert (gate, up and down projections)."""
    return 3 * arch.hidden_size * (arch.expert_intermediate_size or arch.intermediate_size)


def estimated_parameters(arch: ModelArch) -> int:
    """Parameters from the sizes alone (embeddings counted once when tied), for architectures without weights."""
    h, kv = arch.hidden_size, arch.num_kv_heads * arch.head_dim
    attention = h * arch.num_attention_heads * arch.head_dim * 2 + h * kv * 2
    if arch.num_experts:
        mlp = arch.num_experts * (expert_parameters(arch) + h) + 3 * h * arch.shared_expert_intermediate_size
    else:
        mlp = 3 * h * arch.intermediate_size
    embed = arch.vocab_size * h * (1 if arch.tie_word_embeddings else 2)
    return arch.num_layers * (attention + mlp + 2 * h) + embed + h


def parameter_count(arch: ModelArch) -> int:
    """The checkpoint's own count where it was read, else the estimate."""
    return arch.parameters or estimated_parameters(arch)


def active_parameters(arch: ModelArch) -> int:
    """Parameters one token passes through: all of a dense model; a MoE model without its idle experts."""
    idle = max(arch.num_experts - arch.experts_per_token, 0) * arch.num_layers * expert_parameters(arch)
    return max(parameter_count(arch) - idle, 0)


def kv_bytes_per_sequence(arch: ModelArch, tokens: int, value_bytes: float) -> float:
    """KV-cache bytes one sequence of ``tokens`` needs over all layers (all GPUs together)."""
    if arch.kv_lora_rank:  # MLA caches one latent (plus its rotary part) per token and layer, for K and V
        per_token_layer = (arch.kv_lora_rank + arch.qk_rope_head_dim) * value_bytes
    else:
        per_token_layer = 2 * arch.num_kv_heads * arch.head_dim * value_bytes
    return sum(min(tokens, window or tokens) for window in arch.layer_windows()) * per_token_layer


def weight_bytes(dep: Deployment) -> float:
    """Bytes per weight as served: the precision's, or for ``auto`` the checkpoint's quantization or dtype."""
    precision, arch = dep.spec.precision, dep.arch
    assert arch is not None, "callers check that the architecture is known"
    if precision.weights != "auto":
        return BYTES_PER_WEIGHT.get(precision.weights, 2)
    quantized = dep.checkpoint.quant_algo if dep.checkpoint is not None else None
    return BYTES_PER_QUANT_ALGO.get(str(quantized), BYTES_PER_WEIGHT.get(arch.dtype, 2))


def memory_estimate(dep: Deployment) -> dict[str, float]:
    """Bytes per GPU (or host) for weights and a full KV cache; pytorch keeps a full copy per GPU."""
    arch, spec = dep.arch, dep.spec
    assert arch is not None, "callers check that the architecture is known"
    shards = spec.backend.world_size
    weights = parameter_count(arch) * weight_bytes(dep) / shards
    sequence = kv_bytes_per_sequence(arch, sequence_tokens(dep), BYTES_PER_KV.get(spec.precision.kv_cache, 2))
    kv_cache = sequence * spec.backend.max_batch_size / shards
    return {"weights": weights, "kv_cache": kv_cache, "total": weights + kv_cache}


def sequence_tokens(dep: Deployment) -> int:
    model = dep.spec.model
    return (model.max_input_len or 0) + (model.max_output_len or 0)


def estimate(dep: Deployment) -> Estimate:
    spec, arch = dep.spec, dep.arch
    assert arch is not None, "callers check that the architecture is known"
    memory = memory_estimate(dep)
    shards = spec.backend.world_size
    kv_per_sequence = memory["kv_cache"] * shards / spec.backend.max_batch_size  # one sequence, all GPUs
    budget = spec.hardware.memory_gb * GIB * spec.backend.kv_cache_memory_fraction - memory["weights"]
    bandwidth = spec.hardware.memory_bandwidth_gbps * 1e9
    read_per_token = active_parameters(arch) * weight_bytes(dep) / shards
    return Estimate(
        weights_gb=memory["weights"] / 1e9,
        decode_tokens_per_s=bandwidth / read_per_token if read_per_token else 0.0,
        kv_sequences=max(int(budget * shards / kv_per_sequence), 0) if kv_per_sequence else 0,
        sequence_tokens=sequence_tokens(dep),
    )
