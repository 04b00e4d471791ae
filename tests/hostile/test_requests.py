"""Hostile requests to a served deployment: a missing prompt is a clear 400, and the oversized form body
that crashes Triton 2.51 (the server this machine has; README, security) ends the launcher with one line,
no orphan process, and an llm-query in flight told that the server went away."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from launcher.errors import USER_ERROR_EXIT, LauncherError
from launcher.query import Options, ask
from tests.serving import conftest as serving
from tests.serving.conftest import Launch, assert_stopped_cleanly, serving_tiny

pytestmark = pytest.mark.integration

tiny_hf, tiny_server = serving.tiny_hf, serving.tiny_server  # the serving tests' fixtures
CRASH_BODY_BYTES = 8 * 10**6  # what `curl -d @file` sends for an 8 MB file: form-encoded


def post(url: str, body: bytes, content_type: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize(("body", "error"), [
    ({}, "missing required input(s) ['text_input']"),  # Triton refuses it before the model
    ({"parameters": {"max_tokens": 4}}, "text_input is missing"),  # the model refuses it
    ({"text_input": ""}, "The decoder prompt cannot be empty"),  # vLLM's own words, as its backend answers
])
def test_generate_without_a_prompt_is_a_clear_400(tiny_server: Launch, body: dict, error: str) -> None:
    status, reply = post(f"http://{tiny_server.http}/v2/models/llm/generate", json.dumps(body).encode(),
                         "application/json")
    assert status == 400, reply
    assert error in json.loads(reply)["error"]


def test_a_server_crash_ends_the_launcher_in_one_line_and_tells_the_client(tiny_hf: Path, tmp_path: Path) -> None:
    long = shutil.copytree(tiny_hf, tmp_path / "long")  # rotary positions: the tiny model can answer at length
    config = json.loads((long / "config.json").read_text())
    (long / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    with serving_tiny(long, tmp_path, "model.max_output_len=4096") as run:
        pieces: queue.Queue[str] = queue.Queue()
        options = Options(max_tokens=4000, stream=True, sampling={"ignore_eos": True})
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            query = pool.submit(ask, run.grpc, "grpc", "llm", "hello", options, pieces.put)
            pieces.get(timeout=60)  # the answer is streaming
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                post(f"http://{run.http}/v2/models/llm/generate", b"a" * CRASH_BODY_BYTES,
                     "application/x-www-form-urlencoded")
            with pytest.raises(LauncherError) as gone:
                query.result(timeout=60)
        code, output = run.finish(timeout_s=60)
    assert code == USER_ERROR_EXIT, output
    [last] = output.splitlines()[-1:]
    assert last.startswith("error tritonserver: crashed (SIGSEGV) while serving"), output
    assert "server.log" in last and "Traceback" not in output
    assert_stopped_cleanly(run)
    assert str(gone.value.problems[0]) == (
        f"--url: the server at {run.grpc} went away during the request (it stopped or crashed: read its log "
        "(llm-launch's <output_dir>/server.log), then restart it)")
