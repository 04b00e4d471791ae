"""Bench one deployment's OpenAI endpoint with aiperf (one run per concurrency), or compare several benches.

Layout of ``out_dir`` after :func:`run`: ``c<N>/`` per concurrency (aiperf's artifacts: ``profile_export*``,
``inputs.json``, ``logs/aiperf.log``, and ``aiperf-output.log``, what it printed), ``summary.csv``,
``summary.json``, ``throughput_vs_ttft.png``, ``itl_vs_concurrency.png``, and ``hub-cache/`` (the tokenizer as
aiperf reads it offline).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.bench import aiperf
from launcher.bench.plots import plot_comparison, plot_summary
from launcher.bench.settings import BenchSettings, sla_text
from launcher.bench.summary import (
    SUMMARY_CSV,
    SUMMARY_JSON,
    Summary,
    print_rows,
    read_row,
    rows_csv,
    write_atomic,
    write_summary,
)
from launcher.errors import LauncherError, Problem, user_error

if TYPE_CHECKING:
    from rich.console import Console

HUB_CACHE = "hub-cache"
AIPERF_OUTPUT = "aiperf-output.log"
COMPARISON_CSV, COMPARISON_JSON = "comparison.csv", "comparison.json"
PROBE_TIMEOUT_S = 10.0
SHOWN_MESSAGE = 70  # characters of aiperf's latest log message in the progress line


def check_endpoint(url: str, model: str, api_key: str | None = None) -> None:
    """Fail early, naming the key, when nothing answers at ``url`` or its ``/v1/models`` lacks ``model``."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise user_error("bench.url", f"'{url}' is not an http(s) URL", "e.g. bench.url=http://127.0.0.1:9000")
    base = url.rstrip("/")
    models_url = base + ("/models" if base.endswith("/v1") else "/v1/models")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # aiperf's aiohttp ignores proxies too
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        with opener.open(urllib.request.Request(models_url, headers=headers), timeout=PROBE_TIMEOUT_S) as response:
            listing = json.loads(response.read())
    except urllib.error.HTTPError:
        return  # it answers; some OpenAI front ends have no model listing
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise user_error("bench.url", f"nothing answers at {url} ({reason})",
                         "start the deployment first, or set bench.url to its OpenAI endpoint") from None
    except ValueError:
        return  # not a JSON listing
    entries = listing.get("data", []) if isinstance(listing, dict) else []
    served = [entry.get("id") for entry in entries if isinstance(entry, dict)]
    if served and model not in served:
        raise user_error("model.served_name", f"the server at {url} serves {served}, not '{model}'",
                         "bench the name it serves")


def run(url: str, model: str, tokenizer_dir: Path, settings: BenchSettings, out_dir: Path, *, name: str = "",
        console: Console | None = None, api_key: str | None = None) -> Summary:
    """aiperf against ``url`` (serving ``model``) at each of ``settings.concurrency``; summary and plots in
    ``out_dir``; prints progress and the table. ``tokenizer_dir`` is the deployment's Hugging Face directory."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    problems: list[Problem] = settings.problems()
    if not model:
        problems.append(Problem("model.served_name", "is empty", "name the model the server serves"))
    if problems:
        raise LauncherError(*problems)
    executable = aiperf.find_aiperf()
    version = aiperf.aiperf_version(executable)
    check_endpoint(url, model, api_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (SUMMARY_CSV, SUMMARY_JSON):  # a failed run must not leave an older run's summary looking current
        (out_dir / stale).unlink(missing_ok=True)
    hub_cache = out_dir / HUB_CACHE
    aiperf.tokenizer_cache(tokenizer_dir, hub_cache)
    console = console or Console()
    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("aiperf", total=len(settings.concurrency))
        for concurrency in settings.concurrency:
            artifact_dir = out_dir / f"c{concurrency}"
            shutil.rmtree(artifact_dir, ignore_errors=True)  # its exports must be this run's

            def show(message: str, concurrency: int = concurrency) -> None:
                progress.update(task, description=f"concurrency {concurrency}: {message[:SHOWN_MESSAGE]}")

            show("starting aiperf")
            argv = aiperf.command(executable, url, model, settings, concurrency, artifact_dir, api_key)
            aiperf.run_aiperf(argv, hub_cache, artifact_dir / AIPERF_OUTPUT, settings.timeout_s, show)
            rows.append(read_row(artifact_dir, concurrency, settings.sla))
            progress.advance(task)
        progress.update(task, description="aiperf done")
    summary = Summary(name=name or model, url=url, model=model, aiperf_version=version, settings=settings,
                      rows=tuple(rows))
    write_summary(summary, out_dir)
    plot_summary(summary, out_dir)
    sla = f", SLA {sla_text(settings.sla)}" if settings.sla else ""
    title = (f"{summary.name}: {settings.input_tokens} in / {settings.output_tokens} out tokens, "
             f"{settings.endpoint}{sla}")
    print_rows(console, title, [(summary.name, row) for row in summary.rows])
    console.print(f"bench results in {out_dir}", markup=False)
    return summary


@dataclass(frozen=True)
class Comparison:
    """The files :func:`compare` wrote."""

    table_csv: Path
    table_json: Path
    plots: tuple[Path, ...]


def unique_labels(names: Sequence[str]) -> list[str]:
    """``names``, a repeated one numbered (``a``, ``a #2``) so every deployment keeps its own bars."""
    seen: Counter[str] = Counter()
    labels = []
    for name in names:
        seen[name] += 1
        labels.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return labels


def compare(summaries: Sequence[Summary], out_dir: Path, *, console: Console | None = None) -> Comparison:
    """Several deployments' benches (a ``-m`` sweep) side by side: ``comparison.csv``/``.json`` (a row per
    deployment and concurrency) and ``compare_<metric>.png`` in ``out_dir``; prints the table."""
    from rich.console import Console

    if not summaries:
        raise user_error("bench", "no bench summaries to compare", "run action=bench in each sweep job first")
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled = list(zip(unique_labels([summary.name for summary in summaries]), summaries, strict=True))
    flat = [(label, row) for label, summary in labelled for row in summary.rows]
    table_csv, table_json = out_dir / COMPARISON_CSV, out_dir / COMPARISON_JSON
    write_atomic(table_csv, rows_csv([row for _, row in flat], [label for label, _ in flat]))
    deployments = [{"deployment": label, **{k: v for k, v in summary.to_dict().items() if k != "rows"}}
                   for label, summary in labelled]
    rows = [{"deployment": label, **asdict(row)} for label, row in flat]
    write_atomic(table_json, json.dumps({"deployments": deployments, "rows": rows}, indent=2) + "\n")
    plots = plot_comparison(labelled, out_dir)
    console = console or Console()
    print_rows(console, f"{len(labelled)} deployments", flat)
    console.print(f"comparison in {table_csv}, {table_json.name} and {len(plots)} plots", markup=False)
    return Comparison(table_csv, table_json, tuple(plots))
