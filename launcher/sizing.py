"""Memory estimates: weights and a full KV cache per GPU (or per host on CPU)."""

from __future__ import annotations

from launcher.deployment import Deployment

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
