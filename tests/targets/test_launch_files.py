"""Docker and Slurm launch files: exact commands, rank layout, mounts, quoting, shellcheck."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.backends import get_backend
from launcher.deployment import resolve
from launcher.errors import LauncherError
from launcher.pipeline import typed_spec
from launcher.targets import slurm
from tests.conftest import compose_spec
from tests.repository import mpirun_segments

SHELLCHECK = str(Path(sys.executable).parent / "shellcheck")
HOSTILE_DIR = "dep 'x' $(touch pwned) \"q\" `id` %j"
TRTLLM_2X8 = ("model=llama3-70b", "backend=trtllm", "hardware=h100x8n2", "backend.tensor_parallel=8",
              "backend.pipeline_parallel=2", "precision=bf16")
IMAGE = "nvcr.io#nvidia/tritonserver:25.01-trtllm-python-py3"
ARGV_DUMP = "#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def quoted(value: str) -> str:
    """A Hydra override value quoted as a user would on the command line."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fake_tool(directory: Path, name: str) -> Path:
    """An executable ``name`` that prints the argv it got as JSON (and so proves the shell's quoting)."""
    directory.mkdir(exist_ok=True)
    tool = directory / name
    tool.write_text(ARGV_DUMP)
    tool.chmod(0o755)
    return directory


def shellcheck(path: Path, *, hostile: bool = False) -> None:
    """Every check at every severity; with a hostile value, SC2016 ("expressions don't expand in single
    quotes") reports exactly the literal ``$(...)`` that quoting the value must produce, so it is left out."""
    exclude = ["--exclude=SC2016"] if hostile else []
    result = subprocess.run([SHELLCHECK, "--norc", "--severity=style", *exclude, str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def argv_from_script(script: Path, tool: str, tmp_path: Path) -> list[str]:
    """Run ``script`` with a fake ``tool`` first on PATH; the argv it was started with."""
    bin_dir = fake_tool(tmp_path / "bin", tool)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "7"})
    line = next(line for line in done.stdout.splitlines() if line.startswith("["))
    return json.loads(line)


def test_docker_command_for_two_nodes_of_eight_gpus(run_deploy, tmp_path: Path) -> None:
    out_dir = tmp_path / HOSTILE_DIR
    out = Path(run_deploy(*TRTLLM_2X8, "backend.runtime=engine", "target=docker", f"output_dir={quoted(str(out_dir))}",
                          "action=render").output_dir)
    shellcheck(out / "launch.sh", hostile=True)
    argv = argv_from_script(out / "launch.sh", "docker", tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert argv[argv.index("--gpus") + 1] == '"device=0,1,2,3,4,5,6,7"'
    mounts = [argv[i + 1] for i, word in enumerate(argv) if word == "-v"]
    export = tmp_path / "cache"
    assert mounts[0] == f"{out_dir}/model_repository:/triton/model_repository:ro"
    [(source, target, mode)] = [m.split(":") for m in mounts[1:]]
    assert source == target and Path(source).parent == export and mode == "ro"
    ports = [argv[i + 1] for i, word in enumerate(argv) if word == "-p"]
    assert ports == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "--shm-size=2g" in argv
    image = next(word for word in argv if word.startswith("nvcr.io/"))
    assert image == "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3"
    ranks = mpirun_segments(argv)
    assert len(ranks) == 16
    assert all("--model-repository=/triton/model_repository" in rank for rank in ranks)
    assert all("--http-address=0.0.0.0" in rank for rank in ranks)


def test_sbatch_for_two_nodes_of_eight_gpus_starts_one_rank_per_gpu(tmp_path: Path) -> None:
    out_dir = tmp_path / HOSTILE_DIR
    cfg = compose_spec([*TRTLLM_2X8, "target=slurm", f"target.container_image={quoted(IMAGE)}",
                        "target.container_mounts=[/scratch:/scratch]", "target.partition=gpu",
                        "target.account=llm team", f"output_dir={quoted(str(out_dir))}",
                        f"cache_dir={tmp_path / 'cache'}", "action=render"])
    dep = resolve(typed_spec(cfg))
    backend = get_backend("trtllm")
    plan = dataclasses.replace(backend.plan(dep), ranks=16)  # llmapi on Slurm: one srun task per rank
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.job_script(dep, plan, backend))
    shellcheck(script, hostile=True)
    text = script.read_text()
    for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                      "--account='llm team'"):
        assert f"#SBATCH {directive}\n" in text
    log = f"#SBATCH --output={shlex.quote(str(out_dir).replace('%', '%%') + '/slurm-%j.out')}\n"
    assert log in text
    argv = argv_from_script(script, "srun", tmp_path)
    assert not (tmp_path / "pwned").exists()
    repository = f"{out_dir}/model_repository"
    export = str(plan.export.directory)
    assert argv[:4] == ["--ntasks=16", "--ntasks-per-node=8", "--mpi=pmix", f"--container-image={IMAGE}"]
    assert argv[4] == f"--container-mounts={repository}:{repository}:ro,{export}:{export}:ro,/scratch:/scratch"
    assert argv[5:7] == ["trtllm-llmapi-launch", "tritonserver"]
    assert f"--model-repository={repository}" in argv
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--http-address=0.0.0.0"} <= set(argv)


def test_sbatch_engine_runtime_runs_mpirun_with_a_rank_per_gpu(run_deploy, tmp_path: Path, monkeypatch) -> None:
    bin_dir = fake_tool(tmp_path / "bin", "mpirun")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # the job exports the PATH it was rendered with
    out = Path(run_deploy(*TRTLLM_2X8, "backend.runtime=engine", "target=slurm", "server.http_port=0",
                          "action=render").output_dir)
    shellcheck(out / "job.sbatch")
    argv = argv_from_script(out / "job.sbatch", "mpirun", tmp_path)
    ranks = mpirun_segments(["mpirun", *argv])
    assert len(ranks) == 16
    assert all(rank[:2] == ["-n", "1"] and Path(rank[2]).name == "tritonserver" for rank in ranks)
    assert f"--backend-directory={out}/backends" in argv  # as the local target runs it
    http = {word for rank in ranks for word in rank if word.startswith("--http-port=")}
    assert len(http) == 1 and http != {"--http-port=0"}  # 0: the job picked one free port for every rank


def test_one_container_process_cannot_span_nodes(run_deploy) -> None:
    with pytest.raises(LauncherError, match=r"^target.container_image: one container process cannot span the 2"):
        run_deploy(*TRTLLM_2X8, "backend.runtime=engine", "target=slurm", f"target.container_image={quoted(IMAGE)}",
                   "action=render")


def test_sbatch_line_break_in_a_directive_is_refused(run_deploy) -> None:
    with pytest.raises(LauncherError, match=r"^target.partition: contains a line break"):
        run_deploy("model=llama3-8b", "hardware=h100x1", "target=slurm", "target.partition='gpu\nrm -rf ~'",
                   "action=render")


@pytest.mark.parametrize("overrides", [
    ("target=local", "hardware=cpu"),
    ("target=docker", "hardware=h100x1", "model=llama3-8b", "backend=vllm"),
    ("target=docker", "hardware=cpu"),
    ("target=slurm", "hardware=cpu", "server.grpc_port=0"),
    ("target=slurm", "hardware=h100x8", "model=llama3-70b", "backend=vllm", "backend.tensor_parallel=8",
     f"target.container_image={quoted(IMAGE)}"),
    ("target=slurm", *TRTLLM_2X8),
], ids=["local", "docker-vllm", "docker-cpu", "slurm-cpu", "slurm-container", "slurm-trtllm-2x8"])
def test_every_rendered_script_passes_shellcheck(run_deploy, tmp_path: Path, overrides: tuple[str, ...]) -> None:
    out = Path(run_deploy(*overrides, "action=render").output_dir)
    scripts = [p for p in out.iterdir() if p.suffix in (".sh", ".sbatch")]
    assert len(scripts) == 1
    shellcheck(scripts[0])
