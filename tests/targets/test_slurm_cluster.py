"""The Slurm target on a real one-node cluster (``.ci/slurm-setup``): serve, query, cancel; bad input;
a sweep whose combinations run as Slurm jobs through hydra-submitit-launcher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from launcher import query
from launcher.server import port_free
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

FREE_PORTS = ("server.http_port=0", "server.grpc_port=0", "server.metrics_port=0", "server.openai_port=0")
OFFLINE = {"HF_HUB_OFFLINE": "1"}
SERVING = re.compile(r"serving 'llm' as Slurm job (\d+) on (\S+): http://\S+:(\d+), try: llm-query --url \S+:(\d+)")
OPENAI = re.compile(r"^openai (http://(\S+):(\d+)/v1) \(model 'llm'\); try: llm-query --openai", re.MULTILINE)


def tiny(tiny_hf: Path, tmp_path: Path) -> tuple[str, ...]:
    return ("model=tiny-llama", "model.max_input_len=128", f"model.checkpoint={tiny_hf}",
            f"cache_dir={tmp_path / 'cache'}", "hardware=cpu", *FREE_PORTS)


def job_state(job_id: str) -> str:
    found = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    match = re.search(r"JobState=(\S+)", found.stdout)
    return match[1] if match else "GONE"


def wait_job_ended(job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := job_state(job_id)) in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING") \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def processes_mentioning(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if text in command:
            found.append(f"{process.info['pid']}: {command[:200]}")
    return found


def test_serve_answers_and_scancel_leaves_nothing_running(slurm: None, tiny_hf: Path, tmp_path: Path) -> None:
    out = tmp_path / "dep"
    result = run_cli(*tiny(tiny_hf, tmp_path), "target=slurm", f"output_dir={out}", "action=serve", cwd=tmp_path,
                     env=OFFLINE)
    submitted = re.search(r"submitted Slurm job (\d+)", result.stdout)
    assert submitted, result.stdout + result.stderr
    job_id = submitted[1]
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "answer: " in result.stdout  # the launcher's own smoke query
        serving = SERVING.search(result.stdout)
        assert serving and serving[1] == job_id, result.stdout
        node, http, grpc = serving[2], int(serving[3]), int(serving[4])
        assert f"stop it with: scancel {job_id}" in result.stdout
        assert job_state(job_id) == "RUNNING"  # the launcher returned; the job keeps serving
        answer = query.ask(f"{node}:{grpc}", "grpc", "llm", "What is the capital of France?",
                           query.Options(max_tokens=6))
        assert answer.tokens == 6 and answer.text
        openai = OPENAI.search(result.stdout)  # the front end beside the rank-0 server, on the job's node
        assert openai and openai[2] == node, result.stdout
        over_openai = query.ask_openai(openai[1], "llm", "What is the capital of France?", query.Options(max_tokens=6),
                                       chat=False)
        assert over_openai.tokens == 6 and over_openai.text
        log = (out / f"slurm-{job_id}.out").read_text()
        assert f"llm-launch: job={job_id} node={node} http_port={http} grpc_port={grpc}" in log
        assert f" openai_port={openai[3]}" in log and (out / "openai.log").is_file()
        assert processes_mentioning(str(out))  # the server runs from the rendered repository
        assert processes_mentioning(f"--port={openai[3]}")  # the front end
    finally:
        subprocess.run(["scancel", job_id], check=True)
    assert wait_job_ended(job_id, 60) in ("CANCELLED", "GONE")
    deadline = time.monotonic() + 15
    while processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(out)) == [] and processes_mentioning(f"--port={openai[3]}") == []
    assert port_free("0.0.0.0", http) and port_free("0.0.0.0", grpc) and port_free("0.0.0.0", int(openai[3]))


def test_sbatch_refusing_the_job_is_one_line(slurm: None, tiny_hf: Path, tmp_path: Path) -> None:
    result = run_cli(*tiny(tiny_hf, tmp_path), "target=slurm", "target.partition=no-such-partition",
                     f"output_dir={tmp_path / 'dep'}", "action=smoke", cwd=tmp_path, env=OFFLINE)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1
    assert re.match(r"error target: sbatch refused .*job\.sbatch: .*[Ii]nvalid partition", result.stderr)


def test_job_that_never_starts_times_out_naming_its_id_and_state(slurm: None, tiny_hf: Path, tmp_path: Path) -> None:
    result = run_cli(*tiny(tiny_hf, tmp_path), "target=slurm", "target.sbatch_args=['--begin=now+1hour']",
                     "target.queue_timeout_s=2", f"output_dir={tmp_path / 'dep'}", "action=smoke", cwd=tmp_path,
                     env=OFFLINE)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1
    timeout = re.match(r"error target.queue_timeout_s: Slurm job (\d+) is still PENDING \(reason BeginTime\) "
                       r"after 2 s; it was cancelled", result.stderr)
    assert timeout, result.stderr
    assert wait_job_ended(timeout[1], 10) in ("CANCELLED", "GONE")


def test_without_slurm_the_error_says_so(tiny_hf: Path, tmp_path: Path) -> None:
    result = run_cli(*tiny(tiny_hf, tmp_path), "target=slurm", f"output_dir={tmp_path / 'dep'}", "action=serve",
                     cwd=tmp_path, env={**OFFLINE, "PATH": str(tmp_path)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error target: Slurm is not installed here (sbatch, scontrol, scancel not on PATH)")


def test_sweep_runs_each_combination_as_a_slurm_job(slurm: None, tiny_hf: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/launcher=slurm", *tiny(tiny_hf, tmp_path), "action=smoke", "smoke.max_tokens=3,5",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={**OFFLINE, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(r["combination"].split()[-1], r["status"]) for r in rows] == [("smoke.max_tokens=3", "ok"),
                                                                          ("smoke.max_tokens=5", "ok")]
    assert "2/2 ok" in result.stdout and "smoke.max_tokens=5" in result.stdout
    results = sorted(p.name for p in (sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2  # each combination ran as its own Slurm (array) job
    for row in rows:
        assert (Path(row["output_dir"]) / "server.log").is_file()  # each job started its own tritonserver


def test_serve_on_a_numpy2_host_builds_the_serving_environment(slurm: None, numpy2_python: Path, tiny_hf: Path,
                                                                tmp_path: Path) -> None:
    """With numpy 2 in the launcher's Python, the job runs Triton's stub in the numpy<2 overlay environment
    the render named (``target.prepare_serving_env``, shared with the local target), and answers."""
    out = tmp_path / "dep"
    result = subprocess.run([str(numpy2_python), "-m", "launcher.cli", *tiny(tiny_hf, tmp_path), "target=slurm",
                             "target.prepare_serving_env=true", f"output_dir={out}", "action=smoke"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answer: " in result.stdout and "Slurm job" in result.stdout
    path = re.search(r"^export PATH=(\S+?)[:\n]", (out / "job.sbatch").read_text(), re.MULTILINE)
    assert path and Path(path[1]).parent.name.startswith("serving-env-"), path
    assert Path(path[1]).parent.parent == tmp_path / "cache"
