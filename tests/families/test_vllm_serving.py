"""The families users bring, deployed with ``model=auto`` on the vllm backend (vLLM's CPU build behind our Python
backend): the models in one ``tritonserver``, each answering greedily token for token like transformers.

Each vLLM model starts three processes that each import vLLM (~10 CPU-seconds apiece): all six families take
about 5 minutes on two busy cores (6/6 passed in 331 s), over this issue's CI budget, so CI serves the three that
differ most from Llama and from each other (sliding window + soft-capping, fused projections, experts), beside
tests/fixtures/test_tiny_families.py's direct vLLM check of Qwen2 and Gemma 2; ``LLM_LAUNCH_VLLM_FAMILIES=all``
(or a comma-separated list) serves others.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.families.conftest import GREEDY_TOKENS, PROMPT, SERVED, greedy_tokens, render, triton
from tests.fixtures.tiny_families import reference_greedy

pytestmark = pytest.mark.integration
KV_CACHE_BYTES = 32 * 1024**2  # each tiny model needs well under 1 MiB at 256 positions
CHOSEN = os.environ.get("LLM_LAUNCH_VLLM_FAMILIES", "gemma2,phi3,mixtral")
FAMILIES = SERVED if CHOSEN == "all" else tuple(CHOSEN.split(","))


@pytest.fixture(scope="module")
def server(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vllm-families")
    deployments = [render(root, family_dirs[family], "backend=vllm",
                          f"backend.kv_cache_memory_bytes={KV_CACHE_BYTES}") for family in FAMILIES]
    env = {"VLLM_CACHE_ROOT": str(root / "vllm-cache"), "VLLM_NO_USAGE_STATS": "1"}
    with triton(root, deployments, env) as url:
        yield url


@pytest.mark.parametrize("family", FAMILIES)
def test_family_answers_like_transformers(family: str, family_dirs: dict[str, Path], server: str) -> None:
    from transformers import AutoTokenizer

    path = family_dirs[family]
    prompt_ids = AutoTokenizer.from_pretrained(path)(PROMPT).input_ids
    assert greedy_tokens(server, family) == reference_greedy(path, prompt_ids, GREEDY_TOKENS)
