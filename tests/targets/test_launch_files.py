"""Docker and Slurm launch files: exact commands, rank layout, mounts, quoting, shellcheck."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from tests.conftest import write_hf_config
from tests.repository import mpirun_segments

SHELLCHECK = str(Path(sys.executable).parent / "shellcheck")
HOSTILE_DIR = "dep 'x' $(touch pwned) \"q\" `id` %j"
TRTLLM_2X8 = ("model=llama3-70b", "backend=trtllm", "hardware=h100x8n2", "backend.tensor_parallel=8",
              "backend.pipeline_parallel=2", "precision=bf16")
IMAGE = "nvcr.io#nvidia/tritonserver:26.07-trtllm-python-py3"  # llmapi: TensorRT-LLM 1.2.1
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
    assert image == "nvcr.io/nvidia/tritonserver:25.05-trtllm-python-py3"  # engine: TensorRT-LLM 0.19.0
    ranks = mpirun_segments(argv)
    assert len(ranks) == 16
    assert all("--model-repository=/triton/model_repository" in rank for rank in ranks)
    assert all("--http-address=0.0.0.0" in rank for rank in ranks)


def rank_argv(script: Path, rank: int, tmp_path: Path) -> list[str]:
    """The argv ``ranks.sh`` starts for ``rank`` (``exec`` replaced by a tool printing it), with the ports
    the job script would have exported."""
    dump = fake_tool(tmp_path / "bin", "argv-dump") / "argv-dump"
    done = subprocess.run(["bash", "-c", f'exec() {{ {shlex.quote(str(dump))} "$@"; }}; source "$0"', str(script)],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={"PATH": "/usr/bin:/bin", "SLURM_PROCID": str(rank), "http_port": "9000",
                               "grpc_port": "9001", "metrics_port": "9002"})
    return json.loads(done.stdout)


def test_sbatch_for_two_nodes_of_eight_gpus_starts_one_rank_per_gpu(run_deploy, tmp_path: Path) -> None:
    out_dir = tmp_path / HOSTILE_DIR
    out = Path(run_deploy(*TRTLLM_2X8, "target=slurm", f"target.container_image={quoted(IMAGE)}",
                          "target.container_mounts=[/scratch:/scratch]", "target.partition=gpu",
                          "target.account=llm team", f"output_dir={quoted(str(out_dir))}",
                          "action=render").output_dir)
    script, ranks_file = out / "job.sbatch", out / "ranks.sh"
    shellcheck(script, hostile=True)
    shellcheck(ranks_file, hostile=True)
    text = script.read_text()
    for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                      "--account='llm team'"):
        assert f"#SBATCH {directive}\n" in text
    log = f"#SBATCH --output={shlex.quote(str(out_dir).replace('%', '%%') + '/slurm-%j.out')}\n"
    assert log in text
    argv = argv_from_script(script, "srun", tmp_path)
    assert not (tmp_path / "pwned").exists()
    repository = f"{out_dir}/model_repository"
    assert argv[:4] == ["--ntasks=16", "--ntasks-per-node=8", "--mpi=pmix", f"--container-image={IMAGE}"]
    mounts = argv[4].removeprefix("--container-mounts=").split(",")
    assert mounts[0] == f"{repository}:{repository}:ro"
    assert mounts[1] == "/models/Meta-Llama-3-70B-Instruct:/models/Meta-Llama-3-70B-Instruct:ro"  # llmapi's export
    assert mounts[2:] == [f"{ranks_file}:{ranks_file}:ro", "/scratch:/scratch"]
    assert argv[5:] == ["bash", str(ranks_file)]
    ranks = [rank_argv(ranks_file, rank, tmp_path) for rank in range(16)]
    assert not (tmp_path / "pwned").exists()
    assert all(rank[:2] == ["trtllm-llmapi-launch", "tritonserver"] for rank in ranks)
    assert all(f"--model-repository={repository}" in rank for rank in ranks)
    assert all({"--http-port=9000", "--grpc-port=9001", "--metrics-port=9002", "--http-address=0.0.0.0"} <= set(rank)
               for rank in ranks)  # every rank listens on the ports the job picked, on every interface
    assert [rank[-1] for rank in ranks] == [f"--backend-config=python,shm-region-prefix-name=prefix{r}_"
                                            for r in range(16)]


def test_sbatch_engine_runtime_runs_one_srun_task_per_rank(run_deploy, tmp_path: Path, monkeypatch) -> None:
    bin_dir = fake_tool(tmp_path / "bin", "srun")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # the job exports the PATH it was rendered with
    out = Path(run_deploy(*TRTLLM_2X8, "backend.runtime=engine", "target=slurm", "server.http_port=0",
                          "action=render").output_dir)
    shellcheck(out / "job.sbatch")
    shellcheck(out / "ranks.sh")
    argv = argv_from_script(out / "job.sbatch", "srun", tmp_path)
    assert argv == ["--ntasks=16", "--ntasks-per-node=8", "--mpi=pmix", "bash", str(out / "ranks.sh")]
    ranks = [rank_argv(out / "ranks.sh", rank, tmp_path) for rank in range(16)]
    assert all(Path(rank[0]).name == "tritonserver" for rank in ranks)
    assert all(f"--backend-directory={out}/backends" in rank for rank in ranks)  # rank 0 too, as locally
    assert "--load-model=tensorrt_llm" not in ranks[0] and all("--load-model=tensorrt_llm" in r for r in ranks[1:])
    assert {word for rank in ranks for word in rank if word.startswith("--http-port=")} == {"--http-port=9000"}
    assert '"--http-port=${http_port}"' in (out / "ranks.sh").read_text()  # the job's variable, expanded per rank


def test_one_container_process_cannot_span_nodes(run_deploy) -> None:
    with pytest.raises(LauncherError, match=r"^target.container_image: one container process cannot span the 2"):
        run_deploy("model=llama3-70b", "backend=vllm", "hardware=h100x8n2", "backend.tensor_parallel=8",
                   "backend.pipeline_parallel=2", "precision=bf16", "target=slurm",
                   f"target.container_image={quoted(IMAGE)}", "action=render")


def test_sbatch_line_break_in_a_directive_is_refused(run_deploy) -> None:
    with pytest.raises(LauncherError, match=r"^target.partition: contains a line break"):
        run_deploy("model=llama3-8b", "hardware=h100x1", "target=slurm", "target.partition='gpu\nrm -rf ~'",
                   "action=render")


KEY_ENV, KEY = "LLM_LAUNCH_TEST_OPENAI_KEY", "key-value-never-rendered"


def tiny(tmp_path: Path) -> tuple[str, ...]:
    """A tiny Llama's config (no weights: render reads only metadata), served on CPU."""
    checkpoint = write_hf_config(tmp_path / "tiny", max_position_embeddings=256)
    return ("model=tiny-llama", "model.max_input_len=128", "model.max_output_len=32", f"model.checkpoint={checkpoint}",
            "hardware=cpu")


@pytest.mark.parametrize(("target", "script"), [("local", "launch.sh"), ("docker", "launch.sh"),
                                                ("slurm", "job.sbatch")])
def test_launch_files_start_the_frontend_with_escaped_values(run_deploy, tmp_path: Path, monkeypatch, target: str,
                                                             script: str) -> None:
    """Beside the server, the script starts the OpenAI front end with every value as one word, its log in
    openai.log, and the API key's variable by name: the key in this environment lands in no rendered file."""
    monkeypatch.setenv(KEY_ENV, KEY)
    out_dir = tmp_path / HOSTILE_DIR
    template = tmp_path / "chat 'x' $(touch pwned).jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    out = Path(run_deploy(*tiny(tmp_path), f"target={target}", f"output_dir={quoted(str(out_dir))}",
                          f"server.openai_api_key_env={KEY_ENV}", "server.openai_aliases=[Llama-3.1-8B,org/model:v1]",
                          "server.openai_cors_origins=['*']", f"model.chat_template_file={quoted(str(template))}",
                          "action=render").output_dir)
    assert all(KEY not in path.read_text(errors="replace") for path in out.rglob("*") if path.is_file())
    shellcheck(out / script, hostile=True)
    line = next(line for line in (out / script).read_text().splitlines() if "-m launcher.frontend" in line)
    words = shlex.split(line)
    assert words[-2:] == [f"2>>{out_dir}/openai.log", "&"]
    grpc, host, port = ("${grpc_port}", "0.0.0.0", "${openai_port}") if target == "slurm" else ("8001", "127.0.0.1",
                                                                                                 "9000")
    tokenizer = next(word for word in words if word.startswith("--tokenizer="))
    assert tokenizer == f"--tokenizer={tmp_path / 'tiny'}"  # the export's (here: the checkpoint, used in place)
    assert words[:-2] == [
        sys.executable, "-m", "launcher.frontend", f"--triton=127.0.0.1:{grpc}", "--model=llm", f"--host={host}",
        f"--port={port}", "--alias=Llama-3.1-8B", "--alias=org/model:v1", tokenizer,
        f"--chat-template={out_dir}/chat_template.jinja", "--max-tokens=32", "--max-model-len=160",
        f"--api-key-env={KEY_ENV}", "--max-body-bytes=1048576", "--request-timeout-s=600", "--cors-origin=*"]
    assert (out / "chat_template.jinja").read_text() == template.read_text()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("target", ["local", "docker", "slurm"])
def test_without_the_frontend_nothing_starts_it(run_deploy, tmp_path: Path, target: str) -> None:
    """server.openai=false: no front end in the script (its port is not even checked)."""
    out = Path(run_deploy(*tiny(tmp_path), f"target={target}", "server.openai=false", "server.openai_port=8001",
                          "action=render").output_dir)
    script = (out / ("job.sbatch" if target == "slurm" else "launch.sh")).read_text()
    assert "launcher.frontend" not in script and "openai" not in script
    if target != "slurm":
        assert script.rstrip().splitlines()[-1].startswith("exec ")


@pytest.mark.parametrize("overrides", [
    ("target=local", "hardware=cpu"),
    ("target=docker", "hardware=h100x1", "model=llama3-8b", "backend=vllm"),
    ("target=docker", "hardware=cpu"),
    ("target=slurm", "hardware=cpu", "server.grpc_port=0"),
    ("target=slurm", "hardware=h100x8", "model=llama3-70b", "backend=vllm", "backend.tensor_parallel=8",
     f"target.container_image={quoted(IMAGE)}"),
    ("target=slurm", *TRTLLM_2X8),
    ("target=docker", "hardware=cpu", "server.openai=false"),
    ("target=slurm", "hardware=cpu", "server.openai=false"),
], ids=["local", "docker-vllm", "docker-cpu", "slurm-cpu", "slurm-container", "slurm-trtllm-2x8", "docker-no-openai",
        "slurm-no-openai"])
def test_every_rendered_script_passes_shellcheck(run_deploy, tmp_path: Path, overrides: tuple[str, ...]) -> None:
    out = Path(run_deploy(*overrides, "action=render").output_dir)
    scripts = sorted(p.name for p in out.iterdir() if p.suffix in (".sh", ".sbatch"))
    several_ranks = overrides[-1] == TRTLLM_2X8[-1]
    assert scripts == (["job.sbatch", "ranks.sh"] if several_ranks else
                       ["job.sbatch"] if "target=slurm" in overrides else ["launch.sh"])
    for script in scripts:
        shellcheck(out / script)


@pytest.mark.parametrize(("overrides", "bounded"), [
    (("target=docker",), True),  # vllm's default container, 26.08: Triton 2.72
    (("target=docker", "target.tag=24.10"), False),  # Triton 2.51 has no limit (README, security)
    (("target=docker", "target.tag=25.05"), True),  # the first release with the flag: Triton 2.58
    (("target=k8s",), True),
    (("target=slurm", f"target.container_image={quoted(IMAGE)}"), True),
    (("target=slurm", f"target.container_image={quoted(IMAGE.replace('26.07-trtllm', '25.04-vllm'))}"), False),
])
def test_container_servers_bound_http_bodies_where_triton_can(run_deploy, overrides: tuple[str, ...],
                                                              bounded: bool) -> None:
    out = Path(run_deploy("model=llama3-8b", "backend=vllm", "hardware=h100x1", "precision=bf16", *overrides,
                          "action=render").output_dir)
    [launch_file] = [p for p in out.iterdir() if p.name in ("launch.sh", "job.sbatch", "k8s.yaml")]
    flag = "--http-max-input-size=16777216"
    assert (flag in launch_file.read_text()) is bounded
