"""Hydra callback: one summary table for a ``-m`` sweep, also written as CSV and JSON; for ``action=bench`` sweeps
the benches side by side; for the Optuna search (``hydra/sweeper=sla_search``) its ranking, Pareto plot and best
spec. Under the Optuna sweeper a job returns its score (:class:`Scored`, a float) instead of its record."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from launcher.bench import compare, load_summary
from launcher.bench.action import bench_dir
from launcher.bench.search import (
    BEST_SPEC,
    Trial,
    best_row,
    best_spec_yaml,
    plot_pareto,
    ranked,
    score,
    units,
    write_ranking,
)
from launcher.bench.summary import print_wide, write_atomic
from launcher.errors import LauncherError, user_error
from launcher.spec import Action

ROWS = ".rows"  # one JSON row per job, written where the job runs (a submitit job is another process)
FIELDS = ["combination", "status", "problem", "output_dir"]
SEARCH_FIELDS = [*FIELDS, "score"]


class Scored(float):
    """A job's score as the Optuna sweeper takes it (a float), carrying the job's record for the summary."""

    record: dict[str, Any]

    def __new__(cls, value: float, record: dict[str, Any] | None = None) -> Scored:
        scored = super().__new__(cls, value)
        scored.record = record or {}
        return scored


def searching(hydra: Any) -> bool:
    """True under the Optuna sweeper (``hydra/sweeper=optuna``, or a search configured on it)."""
    return "optuna" in str(hydra.sweeper.get("_target_", "")).lower()


def check_job(cfg: DictConfig) -> None:
    """A search trial is measured: it must be ``action=bench`` with a ``bench.sla`` (checked before deploying)."""
    if not searching(HydraConfig.get()):
        return
    if cfg.action != Action.bench:
        raise user_error("action", f"the Optuna search measures every trial, not action={cfg.action.value}",
                         "drop action=, or set action=bench")
    if not cfg.bench.sla:
        raise user_error("bench.sla", "is not set: the search maximises goodput under it",
                         "e.g. bench.sla='ttft_p95_ms=500 itl_p95_ms=100'")


def repeated_trial(cfg: DictConfig) -> Scored | None:
    """Under the Optuna sweeper, a trial whose overrides an earlier trial of this sweep had already: that trial's
    score, not measured again (a small search space makes the sampler repeat itself)."""
    hydra = HydraConfig.get()
    if not searching(hydra):
        return None
    overrides = list(hydra.overrides.task)
    for path in sorted((Path(hydra.sweep.dir) / ROWS).glob("*.json"), key=lambda path: int(path.stem)):
        earlier = json.loads(path.read_text())
        if earlier["overrides"] == overrides and earlier["status"] in ("ok", "invalid"):
            problem = f"the overrides of trial {earlier['num']}: its score, not measured again"
            return Scored(earlier["score"], {"status": "repeated", "problem": problem,
                                             "output_dir": earlier["output_dir"], "score": earlier["score"]})
    return None


def job_result(cfg: DictConfig, record: dict[str, str]) -> dict[str, str] | Scored:
    """What a sweep job returns: its record, or under the Optuna sweeper its goodput per GPU (per core on CPU),
    0 for a combination that could not be deployed or measured."""
    if not searching(HydraConfig.get()):
        return record
    value = 0.0
    if record["status"] == "ok":
        try:
            value = score(load_summary(bench_dir(record["output_dir"])), units(_gpus(cfg))[0])
        except LauncherError as err:
            record = {**record, "status": "invalid", "problem": str(err.problems[0])}
    return Scored(value, {**record, "score": value})


def _gpus(cfg: DictConfig) -> int:
    hardware = cfg.hardware
    return int(hardware.gpus_per_node * hardware.nodes) if hardware.gpu else 0


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        shutil.rmtree(Path(config.hydra.sweep.dir) / ROWS, ignore_errors=True)  # left by an interrupted sweep

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        overrides = " ".join(job_return.overrides or [])
        result = job_return._return_value  # a failed job's exception
        if job_return.status == JobStatus.COMPLETED and isinstance(result, Scored):
            result = result.record
        if job_return.status != JobStatus.COMPLETED or not isinstance(result, dict):
            result = {"status": "failed", "problem": f"{type(result).__name__}: {result}", "output_dir": ""}
        row = {"combination": overrides, **{k: str(result[k]) for k in ("status", "problem", "output_dir")}}
        if "score" in result:
            row["score"] = result["score"]
        choices = {group: choice for group, choice in config.hydra.runtime.choices.items()
                   if not group.startswith("hydra/") and choice is not None}
        record = {**row, "num": config.hydra.job.num, "overrides": list(job_return.overrides or []),
                  "choices": choices, "gpus": _gpus(config)}
        rows = Path(config.hydra.sweep.dir) / ROWS
        rows.mkdir(parents=True, exist_ok=True)
        (rows / f"{config.hydra.job.num}.json").write_text(json.dumps(record))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.console import Console

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        files = sorted((sweep_dir / ROWS).glob("*.json"), key=lambda path: int(path.stem))
        records = [json.loads(path.read_text()) for path in files]
        shutil.rmtree(sweep_dir / ROWS, ignore_errors=True)
        search = searching(config.hydra)
        fields = SEARCH_FIELDS if search else FIELDS
        rows = [{name: record.get(name, "") for name in fields} for record in records]
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        shared = set.intersection(*(set(r["overrides"]) for r in records)) if records else set()
        console = Console(soft_wrap=False)
        print_wide(console, _table(records, fields, shared))
        ok = sum(r["status"] == "ok" for r in rows)
        print(f"{ok}/{len(rows)} ok; summary in {sweep_dir}/summary.csv and summary.json")
        benched = _benched(records, shared)
        if benched:
            compare([summary for _, summary in benched], sweep_dir, console=console)
        if search:
            _search_results(records, dict(benched), shared, sweep_dir, console)


def _varying(record: dict[str, Any], shared: set[str]) -> str:
    """The overrides of a job that not every job of the sweep has."""
    return " ".join(o for o in record["overrides"] if o not in shared)


def _table(records: list[dict[str, Any]], fields: list[str], shared: set[str]) -> Any:
    from rich.table import Table

    table = Table(title=f"sweep: {len(records)} combinations of {' '.join(sorted(shared))}".rstrip())
    for name in fields:
        table.add_column(name, overflow="fold")
    for record in records:
        style = "green" if record["status"] == "ok" else "red"
        cells = [_varying(record, shared), f"[{style}]{record['status']}[/]", record["problem"],
                 record["output_dir"]]
        table.add_row(*cells, *([f"{record['score']:.4g}"] if "score" in fields else []))
    return table


def _benched(records: list[dict[str, Any]], shared: set[str]) -> list[tuple[int, Any]]:
    """(job number, its bench summary labelled by what differs) for every job that benched."""
    found = []
    for record in records:
        path = bench_dir(record["output_dir"]) if record["output_dir"] else None
        if record["status"] == "ok" and path is not None and (path / "summary.json").is_file():
            summary = load_summary(path)
            label = _varying(record, shared) or summary.name
            found.append((record["num"], replace(summary, name=label)))
    return found


def _search_results(records: list[dict[str, Any]], benched: dict[int, Any], shared: set[str], sweep_dir: Path,
                    console: Any) -> None:
    """The search's ranking (CSV, JSON, table), its Pareto plot and the best trial as a conf/deploy spec."""
    trials = []
    for record in records:
        count, unit = units(record["gpus"])
        trials.append(Trial(number=record["num"], combination=_varying(record, shared),
                            overrides=tuple(record["overrides"]), choices=record["choices"], status=record["status"],
                            problem=record["problem"], output_dir=record["output_dir"],
                            score=float(record.get("score") or 0.0), units=count, unit=unit,
                            summary=benched.get(record["num"])))
    ranking_csv, _ = write_ranking(trials, sweep_dir)
    pareto = plot_pareto(trials, sweep_dir)
    print_wide(console, _ranking_table(trials))
    written = [str(ranking_csv), "ranking.json"] + ([pareto.name] if pareto else [])
    best = ranked(trials)[0] if trials else None
    if best is None or best.score <= 0:
        console.print("no trial scored above 0 (none met the SLA, or none was measured: see the summary): "
                      "no best spec written", style="red", markup=False)
    else:
        searched = sorted({o.split("=", 1)[0] for record in records for o in record["overrides"] if o not in shared})
        path = sweep_dir / BEST_SPEC
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, best_spec_yaml(best, trials, searched))
        written.append(str(path))
        console.print(f"best: trial {best.number} ({best.combination}), {best.score:.4g} goodput per {best.unit}",
                      markup=False)
    console.print("search results: " + ", ".join(written), markup=False)


def _ranking_table(trials: list[Trial]) -> Any:
    from rich.table import Table

    table = Table(title=f"Optuna search: {len(trials)} trials, best first")
    for header in ("rank", "trial", "combination", "goodput/unit", "at c", "goodput", "out tok/s", "TTFT p95",
                   "ITL p95", "status"):
        table.add_column(header, justify="left" if header in ("combination", "status") else "right",
                         overflow="fold")
    for rank, trial in enumerate(ranked(trials), 1):
        row = best_row(trial.summary) if trial.summary else None
        numbers = ([str(row.concurrency), f"{row.goodput:.3f}", f"{row.output_tokens_per_s:.1f}",
                    f"{row.ttft_p95_ms:.1f}", f"{row.itl_p95_ms:.1f}"] if row else [""] * 5)
        table.add_row(str(rank), str(trial.number), trial.combination, f"{trial.score:.4g}", *numbers,
                      trial.status)
    return table
