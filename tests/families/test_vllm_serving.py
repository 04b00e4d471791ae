"""The families users bring, deployed with ``model=auto`` on the vllm backend (vLLM's CPU build behind our Python
backend): six models in one ``tritonserver``, each answering greedily token for token like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.families.conftest import GREEDY_TOKENS, PROMPT, SERVED, greedy_tokens, render, triton
from tests.fixtures.tiny_families import reference_greedy

pytestmark = pytest.mark.integration
KV_CACHE_BYTES = 32 * 1024**2  # each tiny model needs well under 1 MiB at 256 positions


@pytest.fixture(scope="module")
def server(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vllm-families")
    deployments = [render(root, family_dirs[family], "backend=vllm",
                          f"backend.kv_cache_memory_bytes={KV_CACHE_BYTES}") for family in SERVED]
    env = {"VLLM_CACHE_ROOT": str(root / "vllm-cache"), "VLLM_NO_USAGE_STATS": "1"}
    with triton(root, deployments, env) as url:
        yield url


@pytest.mark.parametrize("family", SERVED)
def test_family_answers_like_transformers(family: str, family_dirs: dict[str, Path], server: str) -> None:
    from transformers import AutoTokenizer

    path = family_dirs[family]
    prompt_ids = AutoTokenizer.from_pretrained(path)(PROMPT).input_ids
    assert greedy_tokens(server, family) == reference_greedy(path, prompt_ids, GREEDY_TOKENS)
