"""Per-concurrency rows read from aiperf's own export (``profile_export_aiperf.json``), and the bench's summary.

Nothing here measures anything: every number is copied from the statistics aiperf wrote. Goodput is aiperf's
``goodput`` (requests per second whose every ``--goodput`` metric met its threshold, over the benchmark duration)
and ``good_fraction`` its ``good_request_fraction``; ``sla_met`` says whether each bound's percentile, as aiperf
exported it, stays within its limit.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.bench.settings import BenchSettings, SlaBound
from launcher.errors import LauncherError, user_error

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

EXPORT_JSON = "profile_export_aiperf.json"  # aiperf 0.13's summary export (default --profile-export-prefix)
RECORDS_JSONL = "profile_export.jsonl"  # its per-request records
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
# Row field -> (aiperf metric tag, statistic) in the export
EXPORTED = {
    "requests": ("request_count", "avg"),
    "duration_s": ("benchmark_duration", "avg"),
    "request_throughput": ("request_throughput", "avg"),
    "output_tokens_per_s": ("output_token_throughput", "avg"),
    "ttft_p50_ms": ("time_to_first_token", "p50"),
    "ttft_p95_ms": ("time_to_first_token", "p95"),
    "ttft_p99_ms": ("time_to_first_token", "p99"),
    "itl_p50_ms": ("inter_token_latency", "p50"),
    "itl_p95_ms": ("inter_token_latency", "p95"),
    "e2e_p50_ms": ("request_latency", "p50"),
    "e2e_p95_ms": ("request_latency", "p95"),
}
GOODPUT = {"goodput": ("goodput", "avg"), "good_fraction": ("good_request_fraction", "avg")}


@dataclass(frozen=True)
class Row:
    """One concurrency's results, as aiperf exported them (times in ms, throughputs per second)."""

    concurrency: int
    requests: int  # valid requests aiperf counted (errors apart)
    errors: int
    duration_s: float  # aiperf's benchmark_duration (its throughputs divide by its observation window, ~the same)
    request_throughput: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p95_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    goodput: float | None  # requests/s meeting every SLA bound; None without an SLA
    good_fraction: float | None
    sla_met: bool | None  # every bound's percentile within its limit; None without an SLA


ROW_FIELDS = tuple(field.name for field in fields(Row))


def read_row(artifact_dir: Path, concurrency: int, sla: Sequence[SlaBound]) -> Row:
    """The row for one aiperf run from ``artifact_dir/profile_export_aiperf.json``."""
    path = artifact_dir / EXPORT_JSON
    try:
        export = json.loads(path.read_text())
    except FileNotFoundError:
        raise user_error(str(path), "aiperf wrote no summary export",
                         f"read {artifact_dir / 'logs' / 'aiperf.log'}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise user_error(str(path), f"cannot be read as aiperf's export: {err}", "run the bench again") from None
    exported = _profiling_concurrency(export)
    if exported != concurrency:
        raise user_error(str(path), f"is aiperf's export for concurrency {exported}, not {concurrency}",
                         "run the bench again into an empty directory")
    errors = int(_statistic(export, "error_request_count", "avg", path, default=0.0))

    def value(tag: str, statistic: str) -> float:
        found = _statistic(export, tag, statistic, path)
        if found is None:
            raise user_error(str(path), f"has no {tag} {statistic}: aiperf measured none ({errors} requests "
                             "failed)", f"read {artifact_dir / 'logs' / 'aiperf.log'}; a server that reports no "
                             "token usage needs bench.server_token_count=false")
        return found

    values: dict[str, Any] = {name: value(*where) for name, where in EXPORTED.items()}
    values["requests"] = int(values["requests"])
    if sla:
        values.update({name: value(*where) for name, where in GOODPUT.items()})
        values["sla_met"] = all(value(bound.aiperf_tag, f"p{bound.percentile}") <= bound.limit_ms for bound in sla)
    else:
        values.update(goodput=None, good_fraction=None, sla_met=None)
    return Row(concurrency=concurrency, errors=errors, **values)


def _profiling_concurrency(export: dict[str, Any]) -> int | None:
    phases = export.get("input_config", {}).get("phases", [])
    return next((phase.get("concurrency") for phase in phases if phase.get("kind") == "profiling"), None)


def _statistic(export: dict[str, Any], tag: str, statistic: str, path: Path,
               default: float | None = None) -> float | None:
    metric = export.get(tag)
    if metric is None:
        return default
    try:
        return float(metric[statistic])
    except (KeyError, TypeError, ValueError):
        raise user_error(str(path), f"{tag} has no number '{statistic}' (not aiperf 0.13's export?)",
                         "run the bench again with aiperf 0.13 (scripts/setup --bench)") from None


@dataclass(frozen=True)
class Summary:
    """One deployment's bench: what was measured, against what, and a row per concurrency."""

    name: str  # the deployment, as tables and comparison plots label it
    url: str
    model: str
    aiperf_version: str
    settings: BenchSettings
    rows: tuple[Row, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "model": self.model, "aiperf_version": self.aiperf_version,
                "settings": self.settings.to_dict(), "rows": [asdict(row) for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(name=data["name"], url=data["url"], model=data["model"], aiperf_version=data["aiperf_version"],
                   settings=BenchSettings.from_dict(data["settings"]),
                   rows=tuple(Row(**row) for row in data["rows"]))


def rows_csv(rows: Sequence[Row], labels: Sequence[str] | None = None) -> str:
    """CSV text, one line per row; a first ``deployment`` column when ``labels`` (one per row) are given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((["deployment"] if labels is not None else []) + list(ROW_FIELDS))
    for index, row in enumerate(rows):
        cells = ["" if value is None else value for value in asdict(row).values()]
        writer.writerow(([labels[index]] if labels is not None else []) + cells)
    return out.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_summary(summary: Summary, out_dir: Path) -> tuple[Path, Path]:
    """``summary.csv`` and ``summary.json`` in ``out_dir``."""
    csv_path, json_path = out_dir / SUMMARY_CSV, out_dir / SUMMARY_JSON
    write_atomic(csv_path, rows_csv(summary.rows))
    write_atomic(json_path, json.dumps(summary.to_dict(), indent=2) + "\n")
    return csv_path, json_path


def load_summary(bench_dir: Path) -> Summary:
    """The summary a bench wrote into ``bench_dir`` (its ``summary.json``)."""
    path = bench_dir / SUMMARY_JSON
    try:
        return Summary.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise user_error(str(path), "no bench summary there", "run action=bench for that deployment") from None
    except LauncherError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise user_error(str(path), f"is not a bench summary: {err}", "run action=bench again") from None


def print_rows(console: Console, title: str, labelled: Sequence[tuple[str, Row]]) -> None:
    """A table of rows; a deployment column when more than one label appears."""
    from rich.table import Table

    several = len({label for label, _ in labelled}) > 1
    table = Table(title=title)
    headers = ["concurrency", "req/s", "out tok/s", "TTFT p50", "p95", "p99", "ITL p50", "p95", "E2E p50", "p95",
               "goodput", "SLA", "errors"]
    for header in (["deployment"] if several else []) + headers:
        table.add_column(header, justify="left" if header == "deployment" else "right")
    for label, row in labelled:
        sla = "" if row.sla_met is None else ("[green]met[/]" if row.sla_met else "[red]missed[/]")
        cells = [str(row.concurrency), f"{row.request_throughput:.2f}", f"{row.output_tokens_per_s:.1f}",
                 *(f"{ms:.1f}" for ms in (row.ttft_p50_ms, row.ttft_p95_ms, row.ttft_p99_ms, row.itl_p50_ms,
                                          row.itl_p95_ms, row.e2e_p50_ms, row.e2e_p95_ms)),
                 "" if row.goodput is None else f"{row.goodput:.2f}", sla, str(row.errors)]
        table.add_row(*([label] if several else []), *cells)
    print_wide(console, table)
    console.print("times in ms; req/s, tokens/s and goodput (req/s within the SLA) from aiperf's export",
                  style="dim", markup=False)


def print_wide(console: Console, table: Table) -> None:
    """Print ``table`` at its natural width: never squeeze the numbers (a pipe or a file is 80 columns to rich)."""
    wide = console.measure(table, options=console.options.update_width(1000)).maximum
    if wide > console.width:
        from rich.console import Console

        Console(file=console.file, width=wide, color_system=console.color_system,
                force_terminal=console.is_terminal).print(table)
    else:
        console.print(table)
