"""The SLA search's side of a sweep: each trial's score, the ranking, the Pareto plot and the best spec.

A trial's score is its best goodput (aiperf's requests/s that met every ``bench.sla`` bound, over the bench's
concurrencies) per GPU of the hardware entry, or per CPU core the server may use on CPU hardware. A trial that
could not be deployed or measured scores 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.bench.plots import figure_axes, save_png
from launcher.bench.settings import sla_text
from launcher.bench.summary import ROW_FIELDS, Row, Summary, write_atomic

RANKING_CSV, RANKING_JSON, PARETO_PNG = "ranking.csv", "ranking.json", "pareto.png"
BEST_SPEC = Path("deploy") / "best.yaml"  # llm-launch --config-dir=<sweep dir> +deploy=best
SPEC_GROUPS = ("model", "backend", "precision", "hardware", "target")  # conf/deploy files override these
METRIC_NAMES = {"ttft": "TTFT", "itl": "inter-token latency", "e2e": "end-to-end latency"}
NOT_SPEC = ("action", "output_dir", "bench.url", "hydra.")  # trial overrides that are not part of the deployment


def units(gpus: int) -> tuple[int, str]:
    """What goodput is divided by: the hardware's GPUs, or on CPU the cores this process may run on."""
    return (gpus, "GPU") if gpus > 0 else (len(os.sched_getaffinity(0)), "core")


def best_row(summary: Summary) -> Row | None:
    """The concurrency with the most goodput (the lowest on a tie); None without an SLA."""
    rows = [row for row in summary.rows if row.goodput is not None]
    return max(rows, key=lambda row: (row.goodput, -row.concurrency)) if rows else None


def score(summary: Summary, unit_count: int) -> float:
    row = best_row(summary)
    return (row.goodput or 0.0) / unit_count if row else 0.0


@dataclass(frozen=True)
class Trial:
    """One job of the search, as the sweep summary recorded it."""

    number: int
    combination: str  # the overrides that differ between trials
    overrides: tuple[str, ...]  # all of the job's overrides
    choices: Mapping[str, str]  # the config-group options the job composed
    status: str
    problem: str
    output_dir: str
    score: float
    units: int  # GPUs, or CPU cores
    unit: str  # GPU | core
    summary: Summary | None  # None when nothing was measured


def ranked(trials: Sequence[Trial]) -> list[Trial]:
    """Highest score first; the earlier trial first on a tie."""
    return sorted(trials, key=lambda trial: (-trial.score, trial.number))


def ranking_rows(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    rows = []
    for rank, trial in enumerate(ranked(trials), 1):
        row = best_row(trial.summary) if trial.summary else None
        rows.append({
            "rank": rank, "trial": trial.number, "combination": trial.combination, "status": trial.status,
            "goodput_per_unit": trial.score, "units": f"{trial.units} {trial.unit}",
            "concurrency": row.concurrency if row else "", "goodput": row.goodput if row else "",
            "request_throughput": row.request_throughput if row else "",
            "output_tokens_per_s": row.output_tokens_per_s if row else "",
            "ttft_p95_ms": row.ttft_p95_ms if row else "", "itl_p95_ms": row.itl_p95_ms if row else "",
            "sla_met": row.sla_met if row else "", "problem": trial.problem, "output_dir": trial.output_dir,
        })
    return rows


def write_ranking(trials: Sequence[Trial], out_dir: Path) -> tuple[Path, Path]:
    """``ranking.csv`` and ``ranking.json``: every trial, best first, at its best concurrency."""
    import csv
    import io

    rows = ranking_rows(trials)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["rank"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = out_dir / RANKING_CSV, out_dir / RANKING_JSON
    write_atomic(csv_path, text.getvalue())
    write_atomic(json_path, json.dumps(rows, indent=2) + "\n")
    return csv_path, json_path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for index in order:
        if points[index][1] > best_y:
            front.append(index)
            best_y = points[index][1]
    return front


def plot_pareto(trials: Sequence[Trial], out_dir: Path) -> Path | None:
    """Output tokens/s per unit against the first SLA metric's bounded percentile, one point per trial and
    concurrency; the Pareto front joined, the SLA limit drawn, the best trial marked."""
    measured = [trial for trial in trials if trial.summary is not None]
    if not measured:
        return None
    bound = next((trial.summary.settings.sla[0] for trial in measured if trial.summary.settings.sla), None)
    field = bound.key if bound else "ttft_p95_ms"
    if field not in ROW_FIELDS:  # a percentile the summary does not keep (p75, p90)
        field = f"{bound.metric}_p95_ms" if bound else "ttft_p95_ms"
    points, labels = [], []
    for trial in measured:
        for row in trial.summary.rows:
            points.append((getattr(row, field), row.output_tokens_per_s / trial.units))
            labels.append(f"#{trial.number} c={row.concurrency}")
    figure, axes = figure_axes()
    axes.scatter([x for x, _ in points], [y for _, y in points], color="0.6", label="trial x concurrency")
    front = pareto_front(points)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], marker="o", color="C0",
              label="Pareto front")
    for index in front:
        axes.annotate(labels[index], points[index], textcoords="offset points", xytext=(5, 5), fontsize="small")
    top = ranked(trials)[0]
    row = best_row(top.summary) if top.summary else None
    if row is not None and top.score > 0:
        axes.scatter([getattr(row, field)], [row.output_tokens_per_s / top.units], s=160, facecolors="none",
                     edgecolors="C3", linewidths=2, label=f"best: #{top.number} c={row.concurrency}", zorder=3)
    if bound is not None:
        axes.axvline(bound.limit_ms, color="C3", linestyle="--", label=f"SLA {bound.key}={bound.limit_ms:g}")
    metric, percentile, _ = field.split("_")
    axes.set(xlabel=f"{METRIC_NAMES[metric]} {percentile} (ms)", ylabel=f"output tokens/s per {top.unit}",
             title=f"{len(trials)} trials: throughput vs latency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return save_png(figure, out_dir / PARETO_PNG)


def spec_values(overrides: Sequence[str], choices: Mapping[str, str]) -> dict[str, Any]:
    """The trial's value overrides (``backend.max_batch_size=8``) as nested YAML values, read by Hydra's own
    override parser; group choices, deletions and what is not part of a deployment (action, output_dir,
    bench.url, hydra.*) left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete() or key in choices or key.startswith(NOT_SPEC):
            continue
        node = values
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = override.value()
    return values


def best_spec_yaml(best: Trial, trials: Sequence[Trial], searched: Sequence[str]) -> str:
    """``conf/deploy``-style YAML of the best trial, its measured numbers in the header comments."""
    import yaml

    assert best.summary is not None
    row = best_row(best.summary)
    assert row is not None
    settings = best.summary.settings
    lines = [
        "# @package _global_",
        f"# Best of {len(trials)} trials of an Optuna search over {', '.join(searched) or 'nothing'}: the most goodput "
        f"under the SLA {sla_text(settings.sla)} per {best.unit}.",
        f"# Measured by aiperf {best.summary.aiperf_version} ({settings.input_tokens} in / {settings.output_tokens} "
        f"out tokens, {settings.endpoint}, {settings.requests or settings.duration_s} "
        f"{'requests' if settings.requests else 's'} per concurrency) in {best.output_dir}/bench:",
        f"#   goodput {row.goodput:.3f} req/s = {best.score:.4f} per {best.unit} ({best.units}) at concurrency "
        f"{row.concurrency}; {row.request_throughput:.3f} req/s, {row.output_tokens_per_s:.1f} output tokens/s,",
        f"#   TTFT p95 {row.ttft_p95_ms:.1f} ms, ITL p95 {row.itl_p95_ms:.1f} ms, end-to-end p95 "
        f"{row.e2e_p95_ms:.1f} ms, {row.good_fraction:.0%} of requests within the SLA.",
        f"# Trial {best.number}: {' '.join(best.overrides)}",
    ]
    if "deploy" in best.choices:
        lines.append(f"# It was composed with +deploy={best.choices['deploy']}: give that too.")
    lines.append("# Reuse: llm-launch --config-dir=<this sweep dir> +deploy=best (or copy it into conf/deploy/)")
    defaults = {"defaults": [{f"override /{group}": best.choices[group]} for group in SPEC_GROUPS
                             if group in best.choices]}
    body = yaml.safe_dump(defaults, sort_keys=False) + yaml.safe_dump(
        spec_values(best.overrides, best.choices) or {}, sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(lines) + "\n" + body.replace("{}\n", "")
