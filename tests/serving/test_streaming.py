"""``backend.streaming=true``: the smoke query streams; a streamed answer equals the whole answer, over gRPC's
bidirectional stream, over Triton's HTTP ``generate_stream`` (server-sent events) and through the OpenAI front end
(server-sent events too); SIGTERM stops the server and the front end."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from launcher import query
from tests.serving.conftest import FREE_PORTS, TINY, assert_stopped_cleanly, interrupt, launch

pytestmark = pytest.mark.integration


def test_streamed_answer_matches_the_whole_answer(tiny_hf: Path, tmp_path: Path) -> None:
    run = launch(*TINY, f"model.checkpoint={tiny_hf}", f"output_dir={tmp_path / 'dep'}", "backend.streaming=true",
                 *FREE_PORTS, "action=serve")
    try:
        run.wait_for("serving '", timeout_s=180)  # the smoke query already streamed
        whole = query.ask(run.grpc, "grpc", "llm", "Paris is", query.Options(max_tokens=12))
        options = query.Options(max_tokens=12, stream=True)
        for url, protocol in ((run.grpc, "grpc"), (run.http, "http")):
            pieces: list[str] = []
            streamed = query.ask(url, protocol, "llm", "Paris is", options, on_piece=pieces.append)
            assert len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text, protocol
            assert (streamed.tokens, streamed.finish_reason) == (whole.tokens, whole.finish_reason), protocol
        pieces = []
        over_openai = query.ask_openai(run.openai_url, "llm", "Paris is", options, chat=False, on_piece=pieces.append)
        assert len(pieces) > 1 and "".join(pieces) == over_openai.text == whole.text
        assert (over_openai.tokens, over_openai.finish_reason) == (whole.tokens, whole.finish_reason)
        code, output = interrupt(run, signal.SIGTERM)
        assert code == 143, output  # 128 + SIGTERM
        assert "SIGTERM: tritonserver and the openai front end stopped" in output, output
        assert_stopped_cleanly(run)
    finally:
        run.kill()
