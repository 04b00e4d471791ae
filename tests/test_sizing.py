"""The plan-time bounds: decode speed from weight bytes over memory bandwidth, KV-cache capacity."""

from __future__ import annotations

import pytest

from launcher import sizing
from launcher.deployment import resolve
from launcher.spec import to_spec
from tests.conftest import compose_spec, run_cli


def estimate(*overrides: str) -> sizing.Estimate:
    return sizing.estimate(resolve(to_spec(compose_spec(["action=plan", *overrides]))))


def test_llama3_8b_on_one_h100() -> None:
    est = estimate("model=llama3-8b", "hardware=h100x1", "precision=bf16", "backend=vllm")
    # 8.03e9 parameters x 2 bytes; 3.35 TB/s
    assert est.weights_gb == pytest.approx(16.06, abs=0.01)
    assert est.decode_tokens_per_s == pytest.approx(3350 / 16.06, rel=1e-3)
    # 32 layers x 8 KV heads x 128 x (K and V) x 2 bytes = 131,072 bytes per token, 5,120 tokens a sequence
    per_sequence = 131072 * est.sequence_tokens
    assert est.kv_sequences == int((80 * 1024**3 * 0.9 - est.weights_gb * 1e9) / per_sequence)


@pytest.mark.parametrize("tp", [2, 8])
def test_tensor_parallel_splits_the_weights_and_multiplies_the_bound(tp: int) -> None:
    one = estimate("model=llama3-70b", "hardware=h100x8", "precision=bf16", "backend=vllm")
    split = estimate("model=llama3-70b", "hardware=h100x8", "precision=bf16", "backend=vllm",
                     f"backend.tensor_parallel={tp}")
    assert split.weights_gb == pytest.approx(one.weights_gb / tp)
    assert split.decode_tokens_per_s == pytest.approx(one.decode_tokens_per_s * tp)


def test_fp8_halves_the_weights_of_bf16() -> None:
    bf16 = estimate("model=llama3-8b", "hardware=h100x1", "precision=bf16", "backend=vllm")
    fp8 = estimate("model=llama3-8b", "hardware=h100x1", "precision=fp8", "backend=vllm")
    assert fp8.weights_gb == pytest.approx(bf16.weights_gb / 2) and fp8.kv_sequences > bf16.kv_sequences


def test_plan_prints_the_bounds(tmp_path) -> None:
    result = run_cli("model=llama3-8b", "hardware=h100x1", "backend=vllm", "precision=bf16", "action=plan",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "decode <= 209 tokens/s per sequence; the KV cache holds ~91 sequences of 5,120 tokens" in result.stdout
