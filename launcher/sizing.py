"""Memory estimates: weights and a full KV cache per GPU (or per host on CPU)."""

from __future__ import annotations

from launcher.deployment import Deployment
from launcher.plan import Estimate

GIB = 1024**3
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, "fp8": 1, "int8": 1, "int4": 0.5}
BYTES_PER_KV = {"auto": 2, "fp8": 1, "int8": 1}


def memory_estimate(dep: Deployment) -> dict[str, float]:
    """Bytes per GPU (or host) for weights and a full KV cache; pytorch keeps a full copy per GPU."""
    arch, spec = dep.arch, dep.spec
    assert arch is not None, "callers check that the architecture is known"
    shards = spec.backend.world_size
    weight_bytes = BYTES_PER_WEIGHT.get(spec.precision.weights, 2)
    if spec.precision.weights == "auto":
        weight_bytes = BYTES_PER_WEIGHT.get(arch.dtype, 2)
    weights = arch.num_parameters() * weight_bytes / shards
    seq = spec.model.max_input_len + spec.model.max_output_len
    kv_per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * BYTES_PER_KV.get(
        spec.precision.kv_cache, 2)
    kv_cache = kv_per_token * seq * spec.backend.max_batch_size / shards
    return {"weights": weights, "kv_cache": kv_cache, "total": weights + kv_cache}


def estimate(dep: Deployment) -> Estimate:
    spec = dep.spec
    memory = memory_estimate(dep)
    shards = spec.backend.world_size
    kv_per_sequence = memory["kv_cache"] * shards / spec.backend.max_batch_size  # one sequence, all GPUs
    budget = spec.hardware.memory_gb * GIB * spec.backend.kv_cache_memory_fraction - memory["weights"]
    bandwidth = spec.hardware.memory_bandwidth_gbps * 1e9
    return Estimate(
        weights_gb=memory["weights"] / 1e9,
        decode_tokens_per_s=bandwidth / memory["weights"] if memory["weights"] else 0.0,
        kv_sequences=max(int(budget * shards / kv_per_sequence), 0) if kv_per_sequence else 0,
        sequence_tokens=spec.model.max_input_len + spec.model.max_output_len,
    )
