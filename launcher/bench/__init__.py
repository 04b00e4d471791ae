"""Measure a deployment's OpenAI endpoint with NVIDIA's aiperf (run from ``.venv-bench``), summarise, plot, compare.

``run(url, model, tokenizer_dir, BenchSettings(...), out_dir) -> Summary`` benches one deployment;
``compare(summaries, out_dir)`` puts several side by side; ``load_summary(out_dir)`` reads one back.
Heavy modules (rich's live display, matplotlib) load inside the functions that draw.
"""

from launcher.bench.runner import Comparison, compare, run
from launcher.bench.settings import BenchSettings, SlaBound, parse_sla
from launcher.bench.summary import Row, Summary, load_summary

__all__ = ["BenchSettings", "Comparison", "Row", "SlaBound", "Summary", "compare", "load_summary", "parse_sla",
           "run"]
