"""Target fixtures: a real one-node Slurm cluster (``.ci/slurm-setup``) and a tiny model to serve on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import write_hf


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip without Slurm on a developer machine; in CI (``CI`` set) a missing cluster is a failure."""
    if shutil.which("sbatch") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but Slurm is not installed: run .ci/slurm-setup before the tests")
        pytest.skip("Slurm is not installed (no sbatch on PATH); .ci/slurm-setup installs a one-node cluster")
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if nodes.returncode != 0 or not any(s.startswith(("idle", "mixed", "alloc")) for s in nodes.stdout.split()):
        pytest.fail(f"Slurm is installed but has no usable node ({nodes.stdout.strip() or nodes.stderr.strip()}); "
                    "run .ci/slurm-setup")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf(tmp_path_factory.mktemp("tiny") / "hf")
