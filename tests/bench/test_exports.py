"""Fast tests of the bench library on real aiperf 0.13 exports (tests/bench/data, see its README), and on aiperf's
own tokenizer loader in ``.venv-bench`` (built by ``scripts/setup --dev``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.bench import BenchSettings, Summary, compare, load_summary, parse_sla
from launcher.bench import aiperf as aiperf_module
from launcher.bench.plots import ITL_VS_CONCURRENCY, THROUGHPUT_VS_TTFT, plot_summary
from launcher.bench.runner import check_endpoint, run
from launcher.bench.summary import read_row, write_summary
from launcher.errors import LauncherError
from launcher.server import free_ports
from tests.fixtures.tiny_models import tiny_tokenizer

DATA = Path(__file__).resolve().parent / "data" / "aiperf-0.13"
SLA = parse_sla("ttft_p95_ms=30 itl_p95_ms=3")  # what the data was recorded with (data/README.md)
PNG = b"\x89PNG\r\n\x1a\n"
# summary field -> (metric, statistic) as aiperf 0.13 names them in profile_export_aiperf.json
AIPERF_NAMES = {
    "requests": ("request_count", "avg"), "duration_s": ("benchmark_duration", "avg"),
    "request_throughput": ("request_throughput", "avg"), "output_tokens_per_s": ("output_token_throughput", "avg"),
    "ttft_p50_ms": ("time_to_first_token", "p50"), "ttft_p95_ms": ("time_to_first_token", "p95"),
    "ttft_p99_ms": ("time_to_first_token", "p99"), "itl_p50_ms": ("inter_token_latency", "p50"),
    "itl_p95_ms": ("inter_token_latency", "p95"), "e2e_p50_ms": ("request_latency", "p50"),
    "e2e_p95_ms": ("request_latency", "p95"), "goodput": ("goodput", "avg"),
    "good_fraction": ("good_request_fraction", "avg"),
}


def export(concurrency: int) -> dict:
    return json.loads((DATA / f"c{concurrency}" / "profile_export_aiperf.json").read_text())


def profiling_records(concurrency: int) -> list[dict]:
    lines = (DATA / f"c{concurrency}" / "profile_export.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [record["metrics"] for record in records if record["metadata"]["benchmark_phase"] == "profiling"]


def data_summary(name: str = "tiny") -> Summary:
    settings = BenchSettings(concurrency=(1, 2), input_tokens=32, output_tokens=16, requests=4, sla=SLA)
    rows = tuple(read_row(DATA / f"c{c}", c, SLA) for c in settings.concurrency)
    return Summary(name=name, url="http://127.0.0.1:18431", model="tiny", aiperf_version="0.13.0",
                   settings=settings, rows=rows)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_rows_are_aiperfs_numbers(concurrency: int) -> None:
    row = read_row(DATA / f"c{concurrency}", concurrency, SLA)
    exported = export(concurrency)
    assert row.concurrency == concurrency and row.errors == 0
    for field, (metric, statistic) in AIPERF_NAMES.items():
        assert getattr(row, field) == exported[metric][statistic], field
    assert row.requests == 4  # the profiling phase only: the warm-up request is not counted
    ttft_p95, itl_p95 = exported["time_to_first_token"]["p95"], exported["inter_token_latency"]["p95"]
    assert row.sla_met == (ttft_p95 <= 30 and itl_p95 <= 3)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_goodput_is_requests_meeting_every_bound(concurrency: int) -> None:
    """Recount from aiperf's per-request records: a request is good when its TTFT and its ITL are within limits."""
    records = profiling_records(concurrency)
    good = sum(r["time_to_first_token"]["value"] <= 30 and r["inter_token_latency"]["value"] <= 3 for r in records)
    row = read_row(DATA / f"c{concurrency}", concurrency, SLA)
    assert 0 < good < len(records)  # the data has both kinds, so this can tell them apart
    assert row.good_fraction == pytest.approx(good / len(records))
    assert row.goodput == pytest.approx(row.request_throughput * good / len(records))  # the same time window


def test_no_sla_no_goodput() -> None:
    row = read_row(DATA / "c1", 1, ())
    assert (row.goodput, row.good_fraction, row.sla_met) == (None, None, None)


def test_export_of_another_concurrency_is_refused() -> None:
    with pytest.raises(LauncherError, match="concurrency 1, not 2") as caught:
        read_row(DATA / "c1", 2, ())
    assert caught.value.problems[0].key.endswith("c1/profile_export_aiperf.json")


def test_missing_export_and_missing_metric_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="aiperf wrote no summary export") as caught:
        read_row(tmp_path, 1, ())
    assert "logs/aiperf.log" in caught.value.problems[0].fix
    broken = json.loads((DATA / "c1" / "profile_export_aiperf.json").read_text())
    del broken["inter_token_latency"]
    (tmp_path / "profile_export_aiperf.json").write_text(json.dumps(broken))
    with pytest.raises(LauncherError, match="has no inter_token_latency p50") as caught:
        read_row(tmp_path, 1, ())
    assert caught.value.problems[0].key == str(tmp_path / "profile_export_aiperf.json")


def test_summary_files_round_trip(tmp_path: Path) -> None:
    summary = data_summary()
    csv_path, json_path = write_summary(summary, tmp_path)
    assert load_summary(tmp_path) == summary
    with csv_path.open() as f:
        lines = list(csv.DictReader(f))
    assert [int(line["concurrency"]) for line in lines] == [1, 2]
    for line, row in zip(lines, summary.rows, strict=True):
        assert float(line["ttft_p95_ms"]) == row.ttft_p95_ms and float(line["goodput"]) == row.goodput
        assert line["sla_met"] == str(row.sla_met)
    assert json.loads(json_path.read_text())["settings"]["sla"] == {"ttft_p95_ms": 30.0, "itl_p95_ms": 3.0}
    assert not list(tmp_path.glob("*.partial"))


def test_load_summary_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="no bench summary there") as caught:
        load_summary(tmp_path)
    assert caught.value.problems[0].key == str(tmp_path / "summary.json")


def test_plots_are_pngs(tmp_path: Path) -> None:
    paths = plot_summary(data_summary(), tmp_path)
    assert [path.name for path in paths] == [THROUGHPUT_VS_TTFT, ITL_VS_CONCURRENCY]
    assert all(path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000 for path in paths)


def test_compare_puts_deployments_side_by_side(tmp_path: Path) -> None:
    first = data_summary("backend=vllm")
    slower = replace(first, name="backend=pytorch", rows=first.rows[:1])
    comparison = compare([first, slower, first], tmp_path)
    with comparison.table_csv.open() as f:
        lines = list(csv.DictReader(f))
    assert [(line["deployment"], line["concurrency"]) for line in lines] == [
        ("backend=vllm", "1"), ("backend=vllm", "2"), ("backend=pytorch", "1"),
        ("backend=vllm #2", "1"), ("backend=vllm #2", "2")]
    assert float(lines[2]["output_tokens_per_s"]) == first.rows[0].output_tokens_per_s
    table = json.loads(comparison.table_json.read_text())
    assert [d["deployment"] for d in table["deployments"]] == ["backend=vllm", "backend=pytorch", "backend=vllm #2"]
    assert len(table["rows"]) == 5
    assert sorted(path.name for path in comparison.plots) == sorted(
        f"compare_{field}.png" for field in ("request_throughput", "output_tokens_per_s", "ttft_p95_ms",
                                             "itl_p95_ms", "e2e_p95_ms", "goodput"))
    assert all(path.read_bytes().startswith(PNG) for path in comparison.plots)


def test_compare_without_sla_has_no_goodput_plot(tmp_path: Path) -> None:
    summary = data_summary()
    plain = replace(summary, rows=tuple(read_row(DATA / f"c{c}", c, ()) for c in (1, 2)))
    names = {path.name for path in compare([plain], tmp_path).plots}
    assert "compare_goodput.png" not in names and "compare_ttft_p95_ms.png" in names


def test_aiperf_command_line(tmp_path: Path) -> None:
    settings = BenchSettings(concurrency=(4,), input_tokens=100, output_tokens=20, requests=12, warmup_requests=2,
                             sla=parse_sla("ttft_p95_ms=500 itl_p95_ms=100"))
    argv = aiperf_module.command(Path("/x/aiperf"), "http://h:9/v1", "llm", settings, 4, tmp_path / "c4")
    assert argv[:2] == ["/x/aiperf", "profile"] and "--streaming" in argv
    for flag, value in (("--url", "http://h:9/v1"), ("--model", "llm"), ("--concurrency", "4"),
                        ("--endpoint-type", "chat"), ("--tokenizer", "llm-launch/tokenizer"),
                        ("--goodput", "time_to_first_token:500 inter_token_latency:100"),
                        ("--synthetic-input-tokens-mean", "100"), ("--synthetic-input-tokens-stddev", "0"),
                        ("--output-tokens-mean", "20"), ("--output-tokens-stddev", "0"), ("--random-seed", "0"),
                        ("--request-count", "12"), ("--warmup-request-count", "2"),
                        ("--extra-inputs", "ignore_eos:true"), ("--artifact-dir", str(tmp_path / "c4"))):
        assert argv[argv.index(flag) + 1] == value, flag
    timed = aiperf_module.command(Path("a"), "http://h:9", "m", BenchSettings(requests=None, duration_s=30.0,
                                  ignore_eos=False, server_token_count=False, warmup_requests=0), 1, tmp_path)
    assert timed[timed.index("--benchmark-duration") + 1] == "30"
    assert not {"--request-count", "--extra-inputs", "--use-server-token-count", "--goodput",
                "--warmup-request-count"} & set(timed)


def test_aiperf_environment_is_offline_and_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    env = aiperf_module.environment(tmp_path / "hub", tmp_path / "tmp")
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_CACHE"] == str(tmp_path / "hub") and env["TMPDIR"] == str(tmp_path / "tmp")
    assert "PYTHONPATH" not in env


def tokenizer_dir(root: Path) -> Path:
    directory = root / "model"
    tiny_tokenizer().save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"weights are not copied")
    return directory


def test_tokenizer_cache_is_a_hub_snapshot(tmp_path: Path) -> None:
    source = tokenizer_dir(tmp_path)
    hub = tmp_path / "hub"
    assert aiperf_module.tokenizer_cache(source, hub) == "llm-launch/tokenizer"
    repo = hub / "models--llm-launch--tokenizer"
    snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        p.name for p in source.iterdir() if p.name != "model.safetensors")
    aiperf_module.tokenizer_cache(source, hub)  # again: the same snapshot, nothing added
    assert len(list((repo / "snapshots").iterdir())) == 1


def test_aiperf_loads_the_cached_tokenizer_offline_but_not_the_folder(tmp_path: Path) -> None:
    """aiperf 0.13's own loader, offline: our hub-cache name loads; the plain folder fails as upstream does."""
    source = tokenizer_dir(tmp_path)
    aiperf_module.tokenizer_cache(source, tmp_path / "hub")
    script = textwrap.dedent(f"""
        from aiperf.common.tokenizer import Tokenizer
        print(len(Tokenizer.from_pretrained("llm-launch/tokenizer").encode("Paris is the capital of France")))
        try:
            Tokenizer.from_pretrained({str(source)!r})
        except Exception as error:
            print(type(error).__name__, error)
    """)
    python = aiperf_module.find_aiperf().parent / "python"
    env = aiperf_module.environment(tmp_path / "hub", tmp_path)
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    count, failure = done.stdout.strip().splitlines()[-2:]
    assert int(count) == len(tiny_tokenizer().encode("Paris is the capital of France", add_special_tokens=False))
    assert failure.startswith("TokenizerError") and "HFValidationError" in failure


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LauncherError, match="holds no tokenizer") as caught:
        aiperf_module.tokenizer_cache(tmp_path, tmp_path / "hub")
    assert caught.value.problems[0].key == str(tmp_path)
    with pytest.raises(LauncherError, match="is not a directory"):
        aiperf_module.tokenizer_cache(tmp_path / "absent", tmp_path / "hub")


def test_aiperf_is_found_and_is_013() -> None:
    executable = aiperf_module.find_aiperf()
    assert aiperf_module.aiperf_version(executable).startswith("0.13.")


def test_missing_or_wrong_aiperf_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_LAUNCH_AIPERF", str(tmp_path / "absent"))
    with pytest.raises(LauncherError) as caught:
        aiperf_module.find_aiperf()
    (problem,) = caught.value.problems
    assert problem.key == "LLM_LAUNCH_AIPERF" and "scripts/setup --bench" in problem.fix
    older = tmp_path / "aiperf"  # written here: a stand-in executable reporting another aiperf version
    older.write_text("#!/bin/sh\necho 0.12.1\n")
    older.chmod(0o755)
    monkeypatch.setenv("LLM_LAUNCH_AIPERF", str(older))
    with pytest.raises(LauncherError, match=r"reports '0\.12\.1', not aiperf 0\.13\.x"):
        aiperf_module.aiperf_version(aiperf_module.find_aiperf())


def test_bad_settings_fail_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(LauncherError) as caught:
        run("http://127.0.0.1:1", "", tmp_path, BenchSettings(concurrency=(), output_tokens=1), tmp_path / "out")
    assert [p.key for p in caught.value.problems] == ["bench.concurrency", "bench.output_tokens",
                                                      "model.served_name"]
    assert not (tmp_path / "out").exists()


def test_unreachable_or_bad_url_is_one_problem() -> None:
    (port,) = free_ports("127.0.0.1", 1)
    with pytest.raises(LauncherError, match=f"nothing answers at http://127.0.0.1:{port}") as caught:
        check_endpoint(f"http://127.0.0.1:{port}", "tiny")
    assert caught.value.problems[0].key == "bench.url"
    with pytest.raises(LauncherError, match="is not an http"):
        check_endpoint("127.0.0.1:9000", "tiny")


def test_library_imports_nothing_heavy() -> None:
    code = ("import sys, launcher.bench; heavy = {'matplotlib', 'torch', 'transformers', 'rich.progress', "
            "'rich.table', 'urllib.request'} & set(sys.modules); print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
