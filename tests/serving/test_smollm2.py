"""The README's first command for real: SmolLM2-135M-Instruct (GGUF from PyPI) answers on CPU, through its
OpenAI endpoint too (the ``openai`` client, a chat whose template the front end applies), until Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.serving.conftest import FREE_PORTS, assert_stopped_cleanly, interrupt, launch

pytestmark = pytest.mark.integration


def test_default_model_answers_paris(smollm2_cache: Path, tmp_path: Path) -> None:
    run = launch(f"output_dir={tmp_path / 'dep'}", f"cache_dir={smollm2_cache}", *FREE_PORTS, "action=serve")
    try:
        endpoint = run.wait_for("openai http://", timeout_s=900)
        output = "\n".join(run.output)
        answer = next(line for line in run.output if line.startswith("answer: "))
        assert "Paris" in answer, output  # the smoke query, through the front end
        assert "tokens/s" in output and (tmp_path / "dep" / "server.log").is_file()
        assert endpoint.startswith(f"openai {run.openai_url} (model 'llm'); try: llm-query --openai --url ")
        client = openai.OpenAI(base_url=run.openai_url, api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": "What is the "
                                               "capital of France? Answer in one word."}], max_tokens=16,
                                               temperature=0)
        assert "Paris" in reply.choices[0].message.content and reply.usage is not None
        assert (tmp_path / "dep" / "openai.log").is_file()
        code, output = interrupt(run)
        assert code == 130 and "SIGINT: tritonserver and the openai front end stopped" in output, output
        assert_stopped_cleanly(run)
    finally:
        run.kill()
