"""Hydra callback: one summary table for a ``-m`` sweep, also written as CSV and JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        overrides = " ".join(job_return.overrides or [])
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, dict):
            result = job_return.return_value
        else:
            error = job_return._return_value  # the exception a failed job raised
            result = {"status": "failed", "problem": f"{type(error).__name__}: {error}", "output_dir": ""}
        self.rows.append({"combination": overrides, **{k: str(result[k]) for k in
                                                       ("status", "problem", "output_dir")}})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fields = ["combination", "status", "problem", "output_dir"]
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        (sweep_dir / "summary.json").write_text(json.dumps(self.rows, indent=2) + "\n")
        shared = set.intersection(*(set(r["combination"].split()) for r in self.rows)) if self.rows else set()
        table = Table(title=f"sweep: {len(self.rows)} combinations of {' '.join(sorted(shared))}".rstrip())
        for name in fields:
            table.add_column(name, overflow="fold")
        for row in self.rows:
            style = "green" if row["status"] == "ok" else "red"
            varying = " ".join(o for o in row["combination"].split() if o not in shared)
            table.add_row(varying, f"[{style}]{row['status']}[/]", row["problem"], row["output_dir"])
        Console(soft_wrap=False).print(table)
        ok = sum(r["status"] == "ok" for r in self.rows)
        print(f"{ok}/{len(self.rows)} ok; summary in {sweep_dir}/summary.csv and summary.json")
