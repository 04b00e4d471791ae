"""The SLA search's pieces on real aiperf 0.13 exports (tests/bench/data): scores, ranking, Pareto front, the best
spec (which Hydra must compose back), and the float a search job returns."""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.bench.search import (
    BEST_SPEC,
    PARETO_PNG,
    Trial,
    best_row,
    best_spec_yaml,
    pareto_front,
    plot_pareto,
    score,
    spec_values,
    write_ranking,
)
from launcher.sweep import Scored
from tests.bench.test_exports import PNG, data_summary
from tests.conftest import run_cli

CHOICES = {"model": "tiny-llama", "backend": "pytorch", "precision": "auto", "hardware": "cpu", "target": "local"}


def trial(number: int, overrides: tuple[str, ...], value: float | None = None, measured: bool = True) -> Trial:
    summary = data_summary(f"#{number}") if measured else None
    return Trial(number=number, combination=overrides[0], overrides=overrides, choices=CHOICES,
                 status="ok" if measured else "invalid", problem="" if measured else "backend: refused",
                 output_dir=f"sweep/{number}", units=2, unit="core", summary=summary,
                 score=score(summary, 2) if value is None and summary else (value or 0.0))


def test_score_is_the_best_goodput_per_unit() -> None:
    summary = data_summary()
    row = best_row(summary)
    assert row is not None and row.goodput == max(r.goodput for r in summary.rows)
    assert score(summary, 2) == pytest.approx(row.goodput / 2)
    no_sla = replace(summary, rows=tuple(replace(r, goodput=None) for r in summary.rows))
    assert best_row(no_sla) is None and score(no_sla, 2) == 0.0


def test_pareto_front() -> None:
    points = [(100.0, 10.0), (200.0, 30.0), (150.0, 5.0), (300.0, 25.0), (50.0, 8.0), (200.0, 20.0)]
    assert pareto_front(points) == [4, 0, 1]  # by latency: (50, 8), (100, 10), (200, 30)


def test_ranking_is_best_first_with_the_failed_last(tmp_path: Path) -> None:
    trials = [trial(0, ("backend.max_batch_size=1",), 0.2), trial(1, ("backend.max_batch_size=4",), 0.9),
              trial(2, ("backend=trtllm",), measured=False), trial(3, ("backend.max_batch_size=2",), 0.9)]
    csv_path, json_path = write_ranking(trials, tmp_path)
    with csv_path.open() as f:
        lines = list(csv.DictReader(f))
    assert [line["trial"] for line in lines] == ["1", "3", "0", "2"]  # a tie keeps the earlier trial first
    assert [line["rank"] for line in lines] == ["1", "2", "3", "4"]
    assert lines[-1]["status"] == "invalid" and lines[-1]["problem"] == "backend: refused"
    assert lines[-1]["goodput"] == "" and float(lines[0]["goodput_per_unit"]) == 0.9
    row = best_row(trials[1].summary)
    assert float(lines[0]["ttft_p95_ms"]) == row.ttft_p95_ms and lines[0]["units"] == "2 core"
    assert json.loads(json_path.read_text())[0]["combination"] == "backend.max_batch_size=4"


def test_pareto_plot(tmp_path: Path) -> None:
    path = plot_pareto([trial(0, ("a=1",)), trial(1, ("a=2",), measured=False)], tmp_path)
    assert path == tmp_path / PARETO_PNG and path.read_bytes().startswith(PNG)
    assert plot_pareto([trial(1, ("a=2",), measured=False)], tmp_path / "none") is None


def test_spec_values_are_parsed_as_hydra_reads_them() -> None:
    overrides = ("backend=vllm", "backend.max_batch_size=8", "+backend.extra=true", "action=bench",
                 "bench.sla='ttft_p95_ms=500 itl_p95_ms=100'", r"bench.url=http\://h\:9/v1", "bench.concurrency=[1,2]",
                 "output_dir=x", "hydra.sweep.dir=y", "~smoke")
    assert spec_values(overrides, {"backend": "vllm"}) == {
        "backend": {"max_batch_size": 8, "extra": True},
        "bench": {"sla": "ttft_p95_ms=500 itl_p95_ms=100", "concurrency": [1, 2]}}


def test_best_spec_composes_back(tmp_path: Path) -> None:
    """The best spec, put where Hydra looks (--config-dir), composes to the trial's settings."""
    overrides = ("backend.max_batch_size=2", "backend.instance_count=2", "action=bench",
                 "bench.sla='ttft_p95_ms=30 itl_p95_ms=3'")
    best = trial(1, overrides)
    text = best_spec_yaml(best, [trial(0, ("backend.max_batch_size=1",)), best], ["backend.max_batch_size"])
    assert text.startswith("# @package _global_\n# Best of 2 trials of an Optuna search over backend.max_batch_size")
    row = best_row(best.summary)
    assert f"goodput {row.goodput:.3f} req/s" in text and f"TTFT p95 {row.ttft_p95_ms:.1f} ms" in text
    path = tmp_path / BEST_SPEC
    path.parent.mkdir()
    path.write_text(text)
    result = run_cli(f"--config-dir={tmp_path}", "+deploy=best", "action=plan", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import yaml

    spec = yaml.safe_load(result.stdout)
    assert spec["model"]["name"] == "tiny-llama" and spec["backend"]["name"] == "pytorch"
    assert spec["backend"]["max_batch_size"] == 2 and spec["backend"]["instance_count"] == 2
    assert spec["bench"]["sla"] == "ttft_p95_ms=30 itl_p95_ms=3" and spec["action"] == "plan"


def test_scored_is_a_float_carrying_its_record() -> None:
    scored = Scored(0.25, {"status": "ok", "score": 0.25})
    assert float(scored) == 0.25 and scored.record["status"] == "ok"
    copy = pickle.loads(pickle.dumps(scored))  # submitit sends it back from another process
    assert isinstance(copy, Scored) and copy == 0.25 and copy.record == scored.record
