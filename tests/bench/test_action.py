"""``llm-launch action=bench`` end to end: it serves the tiny model through Triton and the OpenAI front end (a child
``llm-launch action=serve``), measures it with aiperf and stops it; a two-job ``-m`` sweep compares its benches;
an Optuna search of three trials writes its ranking, Pareto plot and best spec. Bad settings are one line each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import psutil
import pytest

from launcher.bench import load_summary
from launcher.bench.plots import COMPARED, ITL_VS_CONCURRENCY, THROUGHPUT_VS_TTFT
from launcher.errors import USER_ERROR_EXIT
from tests.conftest import run_cli
from tests.fixtures.tiny_models import write_hf

FREE_PORTS = ("server.http_port=0", "server.grpc_port=0", "server.metrics_port=0", "server.openai_port=0")
SHORT = ("bench.input_tokens=16", "bench.output_tokens=8", "bench.requests=2", "bench.warmup_requests=1")
LOOSE_SLA = "bench.sla='ttft_p95_ms=60000 itl_p95_ms=10000'"  # every request meets it on a loaded CI machine


@pytest.mark.parametrize("overrides, lines", [
    (("target=docker", "bench.concurrency=[0,2]", "bench.requests=null", "bench.endpoint=embeddings"), [
        "error bench.concurrency: must be distinct whole numbers >= 1, got [0, 2]",
        "error bench.requests: set exactly one of bench.requests and bench.duration_s",
        "error bench.endpoint: must be one of chat, completions",
        "error bench.url: action=bench serves the spec itself only with target=local, not target=docker"]),
    (("bench.sla='ttft_p95_ms=5 foo=3'",), ["error bench.sla: unknown bound 'foo'"]),
], ids=["all-at-once", "sla"])
def test_bad_bench_settings_are_one_line_each(tmp_path: Path, overrides: tuple[str, ...], lines: list[str]) -> None:
    result = run_cli("action=bench", *overrides, f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == USER_ERROR_EXIT, result.stderr
    shown = result.stderr.strip().splitlines()
    assert len(shown) == len(lines) and all(got.startswith(want) for got, want in zip(shown, lines, strict=True))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """The tiny random Llama as model=auto overrides, its export cache shared by the module's runs."""
    root = tmp_path_factory.mktemp("tiny")
    return ("model=auto", f"model.checkpoint={write_hf(root / 'tiny')}", "model.max_input_len=64",
            "model.max_output_len=32", f"cache_dir={root / 'cache'}")


def nothing_left_running(directory: Path) -> None:
    """No process that names ``directory`` outlives the run (tritonserver, the serving child, aiperf)."""
    left = [" ".join(p.info["cmdline"]) for p in psutil.process_iter(["cmdline"])
            if str(directory) in " ".join(p.info["cmdline"] or [])]
    assert not left, left


def check_bench(out: Path) -> None:
    """One job's bench: aiperf's numbers, its per-request records, the plots, the served copy and its log."""
    bench = out / "bench"
    summary = load_summary(bench)
    (row,) = summary.rows
    exported = json.loads((bench / "c2" / "profile_export_aiperf.json").read_text())
    assert row.concurrency == 2 and row.requests == exported["request_count"]["avg"] == 2 and row.errors == 0
    assert row.output_tokens_per_s == exported["output_token_throughput"]["avg"]
    assert row.ttft_p95_ms == exported["time_to_first_token"]["p95"]
    assert row.itl_p95_ms == exported["inter_token_latency"]["p95"]
    records = [json.loads(line) for line in (bench / "c2" / "profile_export.jsonl").read_text().splitlines()]
    assert {r["metrics"]["output_sequence_length"]["value"] for r in records} == {8}
    assert summary.url.startswith("http://127.0.0.1:") and summary.url.endswith("/v1")
    assert all((bench / name).read_bytes().startswith(b"\x89PNG") for name in (THROUGHPUT_VS_TTFT,
                                                                               ITL_VS_CONCURRENCY))
    assert (out / "model_repository").is_dir() and (out / "spec.yaml").is_file()
    assert (bench / "served" / "model_repository").is_dir() and (bench / "served" / "server.log").is_file()
    serve_log = (bench / "serve.log").read_text()
    assert "ready in" in serve_log and "SIGTERM" in serve_log, serve_log  # the child served, then was stopped


@pytest.mark.integration
def test_two_job_sweep_serves_measures_and_compares(tiny: tuple[str, ...], tmp_path: Path) -> None:
    """Each job serves the tiny model (a child llm-launch action=serve), benches it and stops it; the sweep ends
    with the two benches side by side."""
    result = run_cli("-m", "backend.max_batch_size=1,4", *tiny, "action=bench", "bench.concurrency=[2]", *SHORT,
                     *FREE_PORTS, "hydra.sweep.dir=sweep", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = json.loads((sweep / "summary.json").read_text())
    assert [row["status"] for row in rows] == ["ok", "ok"]
    for row in rows:
        check_bench(tmp_path / row["output_dir"])
    with (sweep / "comparison.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert [(line["deployment"], line["concurrency"]) for line in lines] == [
        ("backend.max_batch_size=1", "2"), ("backend.max_batch_size=4", "2")]
    for line, row in zip(lines, rows, strict=True):  # each line is that job's own bench
        assert float(line["ttft_p95_ms"]) == load_summary(tmp_path / row["output_dir"] / "bench").rows[0].ttft_p95_ms
    plots = {path.name for path in sweep.glob("compare_*.png")}
    assert plots == {f"compare_{field}.png" for field in COMPARED if field != "goodput"}  # no SLA: no goodput
    assert "2 deployments" in result.stdout and "serves http://127.0.0.1:" in result.stdout
    nothing_left_running(tmp_path)


@pytest.mark.integration
def test_optuna_search_writes_the_best_spec(tiny: tuple[str, ...], tmp_path: Path) -> None:
    """Three trials (Optuna's grid sampler: each batch size once), each served and benched; the best composes."""
    result = run_cli("-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.direction=maximize",
                     "hydra.sweeper.n_jobs=1", "backend.max_batch_size=choice(1,2,4)", *tiny, "action=bench",
                     "bench.concurrency=[2]", *SHORT, LOOSE_SLA, *FREE_PORTS, "hydra.sweep.dir=sweep",
                     cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 3 and all(row["status"] == "ok" and row["score"] > 0 for row in rows)
    ranking = json.loads((sweep / "ranking.json").read_text())
    assert sorted(r["combination"] for r in ranking) == [f"backend.max_batch_size={n}" for n in (1, 2, 4)]
    scores = [r["goodput_per_unit"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    best = ranking[0]
    summary = load_summary(tmp_path / best["output_dir"] / "bench")
    assert best["goodput"] == summary.rows[0].goodput  # aiperf's number, as the job returned it to Optuna
    optuna = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {best['goodput_per_unit']}" in optuna
    assert (sweep / "pareto.png").read_bytes().startswith(b"\x89PNG")
    spec = (sweep / "deploy" / "best.yaml").read_text()
    assert f"goodput {best['goodput']:.3f} req/s" in spec
    size = int(best["combination"].split("=")[1])
    composed = run_cli(f"--config-dir={sweep}", "+deploy=best", *tiny, "action=plan", "--cfg", "job", cwd=tmp_path)
    assert composed.returncode == 0, composed.stderr
    assert f"max_batch_size: {size}" in composed.stdout
    nothing_left_running(tmp_path)
