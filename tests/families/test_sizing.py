"""Architecture-neutral sizing on the sizes of real models: the config.json keys below are copied from the public
checkpoints named (written here as tensor-less HF directories, so the parameters are estimated from the sizes,
as for a model whose weights are not on this machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher import pipeline, sizing
from launcher.deployment import resolve
from launcher.pipeline import typed_spec
from tests.conftest import compose_spec, write_hf_config

MODELS = {
    "Mixtral-8x7B-v0.1": dict(architectures=["MixtralForCausalLM"], hidden_size=4096, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=14336,
                              num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                              max_position_embeddings=32768, torch_dtype="bfloat16"),
    "Qwen3-30B-A3B": dict(architectures=["Qwen3MoeForCausalLM"], hidden_size=2048, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
                          moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, vocab_size=151936,
                          max_position_embeddings=40960, torch_dtype="bfloat16"),
    "DeepSeek-V3": dict(architectures=["DeepseekV3ForCausalLM"], hidden_size=7168, num_hidden_layers=61,
                        num_attention_heads=128, num_key_value_heads=128, intermediate_size=18432,
                        moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
                        kv_lora_rank=512, qk_rope_head_dim=64, vocab_size=129280, max_position_embeddings=163840,
                        torch_dtype="bfloat16"),
    "gemma-2-9b": dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", hidden_size=3584,
                       num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                       intermediate_size=14336, sliding_window=4096, vocab_size=256000, max_position_embeddings=8192,
                       tie_word_embeddings=True, torch_dtype="bfloat16"),
    "Qwen3-8B": dict(architectures=["Qwen3ForCausalLM"], hidden_size=4096, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288,
                     vocab_size=151936, max_position_embeddings=40960, torch_dtype="bfloat16"),
}


@pytest.fixture(scope="module")
def archs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sizes")
    paths = {name: write_hf_config(root / name, **config) for name, config in MODELS.items()}
    return {name: resolve(typed_spec(compose_spec(["model=auto", f"model.checkpoint={path}"]))).arch
            for name, path in paths.items()}


@pytest.mark.parametrize(("name", "total", "active"), [
    ("Mixtral-8x7B-v0.1", 46.7e9, 12.9e9),  # Mistral AI's published counts
    ("Qwen3-30B-A3B", 30.5e9, 3.3e9),  # Qwen's published counts
    ("DeepSeek-V3", 671e9, 37e9),  # DeepSeek's (MLA attention is estimated as GQA here: within a few per cent)
])
def test_mixture_of_experts_counts_every_expert_and_decodes_through_the_active_ones(archs, name: str, total: float,
                                                                                   active: float) -> None:
    arch = archs[name]
    assert sizing.parameter_count(arch) == pytest.approx(total, rel=0.05)
    assert sizing.active_parameters(arch) == pytest.approx(active, rel=0.12)


def test_latent_attention_caches_one_latent_per_token_and_layer(archs) -> None:
    """DeepSeek-V3's MLA: kv_lora_rank + qk_rope_head_dim values per token and layer, not K and V per head."""
    assert sizing.kv_bytes_per_sequence(archs["DeepSeek-V3"], 1, 2) == (512 + 64) * 61 * 2


def test_sliding_window_layers_hold_at_most_the_window(archs) -> None:
    """Gemma 2 9B: every other layer attends to 4096 tokens; at 8192 tokens half the layers hold half as much."""
    arch = archs["gemma-2-9b"]
    per_token_layer = 2 * 8 * 256 * 2
    assert arch.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert sizing.kv_bytes_per_sequence(arch, 8192, 2) == (21 * 8192 + 21 * 4096) * per_token_layer
    assert sizing.kv_bytes_per_sequence(arch, 1000, 2) == 42 * 1000 * per_token_layer


def test_qwen3_8b_plans_on_one_h100(tmp_path: Path) -> None:
    """The issue's example: model=auto backend=vllm hardware=h100x1, lengths fitted to its 40,960 positions."""
    path = write_hf_config(tmp_path / "Qwen3-8B", **MODELS["Qwen3-8B"])
    overrides = ("model=auto", f"model.checkpoint={path}", "backend=vllm", "hardware=h100x1", "action=plan")
    dep = resolve(typed_spec(compose_spec(list(overrides))), overrides)
    assert dep.spec.name == "Qwen3-8B-vllm-auto"
    assert (dep.spec.model.max_input_len, dep.spec.model.max_output_len) == (36864, 4096)
    assert pipeline.problems(dep) == []
    memory = sizing.memory_estimate(dep)
    assert memory["weights"] == pytest.approx(8.19e9 * 2, rel=0.02)
    assert memory["kv_cache"] == 36 * 2 * 8 * 128 * 2 * 40960 * 8  # layers x K,V x heads x dim x bf16 x tokens x batch
