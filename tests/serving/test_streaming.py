"""``backend.streaming=true``: a decoupled model streams its answer piece by piece over gRPC."""

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
        pieces: list[str] = []
        options = query.Options(max_tokens=12, stream=True)
        streamed = query.ask(run.grpc, "grpc", "llm", "Paris is", options, on_piece=pieces.append)
        whole = query.ask(run.grpc, "grpc", "llm", "Paris is", query.Options(max_tokens=12))
        assert len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text
        assert streamed.tokens == whole.tokens
        with pytest.raises(query.LauncherError, match="decoupled"):
            query.ask(run.http, "http", "llm", "Paris is", options)
        code, output = interrupt(run, signal.SIGTERM)
        assert code == 0 and "SIGTERM: tritonserver stopped" in output, output
        assert_stopped_cleanly(run)
    finally:
        run.kill()
