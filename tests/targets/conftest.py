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


@pytest.fixture(scope="session")
def numpy2_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python whose numpy is 2 (as on GPU hosts with CUDA torch) and that sees this environment's other
    packages: a venv holding numpy 2 in its own site-packages, ahead of a ``.pth`` naming ours."""
    import sys
    import sysconfig

    env = tmp_path_factory.mktemp("numpy2") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), "numpy>=2,<3"], check=True, timeout=300)
    repo = Path(__file__).resolve().parents[2]
    (site / "llm_launch_env.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{repo}\n")
    python = env / "bin" / "python"
    version = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, check=True).stdout
    assert version.startswith("2."), version
    return python
