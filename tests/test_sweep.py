"""A ``-m`` sweep runs every combination, records invalid ones and prints one summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.conftest import run_cli


def test_twelve_combination_plan_sweep(tmp_path: Path) -> None:
    result = run_cli("-m", "backend=pytorch,vllm,trtllm", "precision=bf16,fp8", "hardware=h100x1,a100x1",
                     "model=llama3-8b", "action=plan", "hydra.sweep.dir=sweep", cwd=tmp_path,
                     env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert len(rows) == 12
    with open(tmp_path / "sweep" / "summary.csv") as f:
        assert list(csv.DictReader(f)) == rows
    invalid = {r["combination"]: r["problem"] for r in rows if r["status"] != "ok"}
    assert len(invalid) == 4
    for combination, problem in invalid.items():
        assert "precision=fp8" in combination
        assert problem.startswith("precision:")
    assert "8/12 ok" in result.stdout
    assert not (tmp_path / "deployments").exists()  # plan writes no deployment


def test_render_sweep_gives_each_job_its_own_directory(tmp_path: Path) -> None:
    result = run_cli("-m", "backend=vllm", "hardware=h100x1,a100x1", "model=llama3-8b", "action=render",
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    dirs = {r["output_dir"] for r in rows}
    assert len(dirs) == 2
    assert all((Path(d) / "model_repository" / "llm" / "config.pbtxt").is_file() for d in dirs)


def test_search_trials_must_be_benches(tmp_path: Path) -> None:
    """Under the Optuna sweeper (the checked-in sla_search) a trial that is not action=bench is refused before it
    deploys: it scores 0, the search completes, and no best spec is written."""
    result = run_cli("-m", "hydra/sweeper=sla_search", "hydra.sweeper.n_trials=2", "action=plan",
                     "hydra.sweep.dir=sweep", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert len(rows) == 2 and {row["status"] for row in rows} == {"invalid"}
    assert all(row["score"] == 0 and row["problem"].startswith("action: the Optuna search measures every trial")
               for row in rows)
    assert "best_value: 0.0" in (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert len(json.loads((tmp_path / "sweep" / "ranking.json").read_text())) == 2
    assert not (tmp_path / "sweep" / "deploy").exists() and "no best spec written" in result.stdout
