"""The README's first command for real: SmolLM2-135M-Instruct (GGUF from PyPI) answers on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.conftest import FREE_PORTS, launch, wait_gone

pytestmark = pytest.mark.integration


def test_default_model_answers_paris(smollm2_cache: Path, tmp_path: Path) -> None:
    run = launch(f"output_dir={tmp_path / 'dep'}", f"cache_dir={smollm2_cache}", *FREE_PORTS, "action=smoke")
    try:
        code, output = run.finish(timeout_s=900)
        assert code == 0, output
        answer = next(line for line in output.splitlines() if line.startswith("answer: "))
        assert "Paris" in answer, output
        assert "tokens/s" in output and (tmp_path / "dep" / "server.log").is_file()
        assert run.server_pid is not None and wait_gone(run.server_pid, 10)
    finally:
        run.kill()
