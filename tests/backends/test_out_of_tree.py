"""A fourth backend from outside the project (``tests/fixtures/plugins/llm_launch_echo``, found through its
``llm_launch.backends`` entry point on ``sys.path``) passes the backend conformance suite and serves in a
real Triton, with no edit to any file under ``launcher/``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.fixtures.tiny_models import write_hf

PLUGINS = REPO / "tests" / "fixtures" / "plugins"
ENV = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), str(REPO)]), "HF_HUB_OFFLINE": "1"}
CASES = 16  # the suite's hardware x target cases for one backend


def test_echo_backend_passes_the_conformance_suite(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "echo",
                           str(REPO / "tests" / "backends" / "test_conformance.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"{CASES} passed" in done.stdout


@pytest.mark.integration
def test_echo_backend_serves(tmp_path: Path) -> None:
    """``backend=echo`` with no YAML entry in conf/: its schema is its config; a real Triton answers (over gRPC: the
    echo model takes text only, so the OpenAI front end would refuse the smoke query's max_tokens)."""
    checkpoint = write_hf(tmp_path / "tiny")
    done = run_cli("backend=echo", "model=tiny-llama", "model.max_input_len=128", f"model.checkpoint={checkpoint}",
                   "action=smoke", "smoke.prompt=hello from outside", "model.chat_template=false",
                   "server.http_port=0", "server.grpc_port=0", "server.metrics_port=0", "server.openai=false",
                   f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answer: hello from outside" in done.stdout
    assert (tmp_path / "out" / "model_repository" / "llm" / "1" / "model.py").is_file()
