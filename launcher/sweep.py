"""Hydra callback: one summary table for a ``-m`` sweep, also written as CSV and JSON."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

ROWS = ".rows"  # one JSON row per job, written where the job runs (a submitit job is another process)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / ROWS, ignore_errors=True)  # left by an interrupted sweep

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        overrides = " ".join(job_return.overrides or [])
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, dict):
            result = job_return.return_value
        else:
            error = job_return._return_value  # the exception a failed job raised
            result = {"status": "failed", "problem": f"{type(error).__name__}: {error}", "output_dir": ""}
        row = {"combination": overrides, **{k: str(result[k]) for k in ("status", "problem", "output_dir")}}
        rows = Path(config.hydra.sweep.dir) / ROWS
        rows.mkdir(parents=True, exist_ok=True)
        (rows / f"{config.hydra.job.num}.json").write_text(json.dumps(row))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        files = sorted((sweep_dir / ROWS).glob("*.json"), key=lambda path: int(path.stem))
        rows = [json.loads(path.read_text()) for path in files]
        shutil.rmtree(sweep_dir / ROWS, ignore_errors=True)
        fields = ["combination", "status", "problem", "output_dir"]
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        shared = set.intersection(*(set(r["combination"].split()) for r in rows)) if rows else set()
        table = Table(title=f"sweep: {len(rows)} combinations of {' '.join(sorted(shared))}".rstrip())
        for name in fields:
            table.add_column(name, overflow="fold")
        for row in rows:
            style = "green" if row["status"] == "ok" else "red"
            varying = " ".join(o for o in row["combination"].split() if o not in shared)
            table.add_row(varying, f"[{style}]{row['status']}[/]", row["problem"], row["output_dir"])
        Console(soft_wrap=False).print(table)
        ok = sum(r["status"] == "ok" for r in rows)
        print(f"{ok}/{len(rows)} ok; summary in {sweep_dir}/summary.csv and summary.json")
