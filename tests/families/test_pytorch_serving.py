"""The families users bring, deployed with ``model=auto`` on the pytorch backend (transformers inside Triton's
Python backend): six models in one ``tritonserver``, each answering greedily token for token like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.families.conftest import GREEDY_TOKENS, PROMPT, SERVED, greedy_tokens, render, triton
from tests.fixtures.tiny_families import reference_greedy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pytorch-families")
    deployments = [render(root, family_dirs[family], "backend=pytorch") for family in SERVED]
    with triton(root, deployments, {}) as url:
        yield url


@pytest.mark.parametrize("family", SERVED)
def test_family_answers_like_transformers(family: str, family_dirs: dict[str, Path], server: str) -> None:
    from transformers import AutoTokenizer

    path = family_dirs[family]
    prompt_ids = AutoTokenizer.from_pretrained(path)(PROMPT).input_ids
    assert greedy_tokens(server, family) == reference_greedy(path, prompt_ids, GREEDY_TOKENS)
