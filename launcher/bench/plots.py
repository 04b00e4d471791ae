"""PNG plots of bench summaries with matplotlib (its object API: no pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.bench.summary import Row, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

THROUGHPUT_VS_TTFT = "throughput_vs_ttft.png"
ITL_VS_CONCURRENCY = "itl_vs_concurrency.png"
# Row field -> axis label; one comparison plot each (compare_<field>.png)
COMPARED = {
    "request_throughput": "requests/s",
    "output_tokens_per_s": "output tokens/s",
    "ttft_p95_ms": "TTFT p95 (ms)",
    "itl_p95_ms": "inter-token latency p95 (ms)",
    "e2e_p95_ms": "end-to-end latency p95 (ms)",
    "goodput": "goodput (requests/s within the SLA)",
}
DPI = 120


def figure_axes() -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    return figure, figure.add_subplot()


def save_png(figure: Figure, path: Path) -> Path:
    partial = path.with_name(path.stem + ".partial.png")
    figure.savefig(partial, dpi=DPI)
    partial.replace(path)
    return path


def plot_summary(summary: Summary, out_dir: Path) -> list[Path]:
    """Output tokens/s against TTFT p95 (one point per concurrency), and ITL p50/p95 against concurrency."""
    rows = sorted(summary.rows, key=lambda row: row.concurrency)
    figure, axes = figure_axes()
    axes.plot([row.ttft_p95_ms for row in rows], [row.output_tokens_per_s for row in rows], marker="o")
    for row in rows:
        axes.annotate(f"c={row.concurrency}", (row.ttft_p95_ms, row.output_tokens_per_s),
                      textcoords="offset points", xytext=(5, 5))
    axes.set(xlabel="TTFT p95 (ms)", ylabel="output tokens/s", title=f"{summary.name}: throughput vs TTFT p95")
    axes.grid(alpha=0.3)
    paths = [save_png(figure, out_dir / THROUGHPUT_VS_TTFT)]

    figure, axes = figure_axes()
    levels = [row.concurrency for row in rows]
    axes.plot(levels, [row.itl_p50_ms for row in rows], marker="o", label="p50")
    axes.plot(levels, [row.itl_p95_ms for row in rows], marker="s", label="p95")
    _concurrency_axis(axes, levels)
    axes.set(ylabel="inter-token latency (ms)", title=f"{summary.name}: inter-token latency vs concurrency")
    axes.legend()
    paths.append(save_png(figure, out_dir / ITL_VS_CONCURRENCY))
    return paths


def _concurrency_axis(axes: Axes, levels: Sequence[int]) -> None:
    if len(levels) > 1 and max(levels) / min(levels) >= 4:
        axes.set_xscale("log", base=2)
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.set_xlabel("concurrency")
    axes.grid(alpha=0.3)


def plot_comparison(labelled: Sequence[tuple[str, Summary]], out_dir: Path) -> list[Path]:
    """One grouped bar chart per metric: concurrencies along x, the deployments side by side."""
    levels = sorted({row.concurrency for _, summary in labelled for row in summary.rows})
    width = 0.8 / len(labelled)
    paths = []
    for field, label in COMPARED.items():
        if all(getattr(row, field) is None for _, summary in labelled for row in summary.rows):
            continue  # goodput without an SLA
        figure, axes = figure_axes()
        for index, (name, summary) in enumerate(labelled):
            by_level: dict[int, Row] = {row.concurrency: row for row in summary.rows}
            shown = [(position, getattr(by_level[level], field)) for position, level in enumerate(levels)
                     if level in by_level and getattr(by_level[level], field) is not None]
            axes.bar([position - 0.4 + width * (index + 0.5) for position, _ in shown],
                     [value for _, value in shown], width, label=name)
        axes.set_xticks(range(len(levels)), [str(level) for level in levels])
        axes.set(xlabel="concurrency", ylabel=label, title=label)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize="small")
        paths.append(save_png(figure, out_dir / f"compare_{field}.png"))
    return paths
