"""The OpenAI front end's overhead: tokens/s and time to first token through it vs straight gRPC to Triton.

One run: SmolLM2-135M-Instruct on the CPU backends (both by default, one ``tritonserver`` as the front end's
tests serve them), each behind its own front end (``python -m launcher.frontend``). For 1 and 8 concurrent
streams x 64 new tokens (greedy, ``ignore_eos``), the same chat is asked (a) straight over gRPC with
``tritonclient``'s asyncio client (the chat template applied by the bench) and (b) as a streamed chat
completion through the front end (``aiohttp``, as aiperf uses, server-sent events; the front end
applies the template).
Each round runs (a) and (b) back to back, in turn first, and gives one paired ratio and TTFT delta (a
shared machine's speed drifts by more than the front end costs); the median round counts and the
interquartile range says how far to trust it. Tokens are the model's
own counts (``num_output_tokens``; ``usage`` with ``include_usage``). Targets: (b)/(a) >= 0.97x tokens/s,
TTFT within +5 ms. Usage: ``python bench/openai_bench.py [--backend vllm|pytorch|source] [--rounds 9]``
(``source``: ``bench/token_source.py`` in place of the model, one word every ``--interval-ms``, no compute).
``--triton HOST:PORT --openai URL --model NAME --tokenizer DIR`` measures a Triton and a front end already
running instead (another machine's, a GPU deployment's); ``--frontend-pid`` adds the front end's CPU column.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEW_TOKENS = 64
CONCURRENCY = (1, 8)
QUESTION = "Write a long story about a dragon who lives in Paris."
Stream = Callable[[], Awaitable[tuple[float, int]]]  # one request: (TTFT s, generated tokens)


class Row(NamedTuple):
    grpc_rate: float  # tokens/s, median over rounds
    api_rate: float
    ratio: tuple[float, float, float]  # the rounds' (b)/(a) tokens/s: first quartile, median, third quartile
    ttft_delta: tuple[float, float, float]  # the rounds' (b) - (a) TTFT in s: quartiles likewise
    cpu_per_token: float  # the front end's CPU seconds per token it streamed


def quartiles(values: list[float]) -> tuple[float, float, float]:
    low, middle, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, middle, high


async def batch(one: Stream, streams: int) -> tuple[float, float, int]:
    """``streams`` requests at once: generated tokens/s over the wall time, mean TTFT, tokens."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - start
    tokens = sum(count for _, count in results)
    return tokens / wall, statistics.mean(ttft for ttft, _ in results), tokens


async def compare(direct: Stream, openai: Stream, rounds: int, cpu: Callable[[], float]) -> dict[int, Row]:
    """Per concurrency: each round runs both paths back to back (in turn first, ABBA, so a machine
    speeding up or slowing down weighs on both alike) and gives one paired ratio and TTFT delta; and the front
    end's CPU time per token it streamed (``cpu``: its CPU seconds so far)."""
    found: dict[int, Row] = {}

    async def through_front_end(streams: int) -> tuple[tuple[float, float, int], float]:
        before = cpu()
        result = await batch(openai, streams)
        return result, cpu() - before

    for streams in CONCURRENCY:
        await batch(direct, streams), await batch(openai, streams)  # warm-up
        pairs: list[tuple[tuple[float, float, int], tuple[float, float, int]]] = []
        used = 0.0
        for round_ in range(rounds):
            if round_ % 2:
                api, spent = await through_front_end(streams)
                grpc = await batch(direct, streams)
            else:
                grpc = await batch(direct, streams)
                api, spent = await through_front_end(streams)
            pairs.append((grpc, api))
            used += spent
        tokens = sum(api[2] for _, api in pairs)
        found[streams] = Row(statistics.median(grpc[0] for grpc, _ in pairs),
                             statistics.median(api[0] for _, api in pairs),
                             quartiles([api[0] / grpc[0] for grpc, api in pairs]),
                             quartiles([api[1] - grpc[1] for grpc, api in pairs]), used / tokens)
    return found


async def bench(grpc: str, model: str, served_name: str, url: str, key: str, tokenizer_dir: str,
                rounds: int, pid: int | None) -> dict[int, Row]:
    import aiohttp
    import psutil

    from launcher.frontend.upstream import Upstream
    from launcher.interfaces import Options, chat_prompt

    messages = [{"role": "user", "content": QUESTION}]
    prompt = chat_prompt(tokenizer_dir, messages)
    options = Options(max_tokens=NEW_TOKENS, temperature=0.0, stream=True, sampling={"ignore_eos": True})
    upstream = Upstream(grpc, model)
    served = await upstream.model()

    async def direct() -> tuple[float, int]:
        start, first, tokens = time.perf_counter(), None, 0
        async for piece in upstream.generate(served, prompt, options):
            if piece.text and first is None:
                first = time.perf_counter() - start
            tokens += piece.output_tokens or 0
        return first or 0.0, tokens

    body = {"model": served_name, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    connector = aiohttp.TCPConnector(limit=max(CONCURRENCY))
    async with aiohttp.ClientSession(url + "/", headers={"Authorization": f"Bearer {key}"}, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as client:
        while True:  # the front end loads the tokenizer once Triton is ready
            async with client.get(url.removesuffix("/v1") + "/health/ready") as ready:
                if ready.status == 200:
                    break
            await asyncio.sleep(0.2)

        async def openai() -> tuple[float, int]:
            start, first, tokens = time.perf_counter(), None, 0
            async with client.post("chat/completions", json=body) as reply:
                reply.raise_for_status()
                async for line in reply.content:
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            return first or 0.0, tokens

        try:
            front_end = psutil.Process(pid) if pid else None
            return await compare(direct, openai, rounds,
                                 lambda: sum(front_end.cpu_times()[:2]) if front_end else float("nan"))
        finally:
            await upstream.close()


def source_repository(dep: Any, interval_s: float) -> None:
    """Turn a rendered pytorch deployment's model into ``token_source.py`` (same config: the vLLM-backend
    contract, its tokenizer), one word every ``interval_s``."""
    model = next(dep.paths.repository.iterdir())
    shutil.copyfile(REPO / "bench" / "token_source.py", model / "1" / "model.py")
    with (model / "config.pbtxt").open("a") as config:
        config.write(f'parameters {{ key: "token_interval_s" value: {{ string_value: "{interval_s}" }} }}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=("vllm", "pytorch", "source"),
                        help="backend(s) to measure (default: vllm and pytorch; source: bench/token_source.py, "
                        "no model)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per case (median)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="the source's time between words")
    running = parser.add_argument_group("a running deployment (all four, in place of --backend)")
    running.add_argument("--triton", metavar="HOST:PORT", help="its Triton's gRPC address")
    running.add_argument("--openai", metavar="URL", help="its front end, http://HOST:PORT/v1")
    running.add_argument("--model", help="the Triton model (also the OpenAI model id unless --served-name)")
    running.add_argument("--tokenizer", metavar="DIR", help="the model's tokenizer (the chat template for gRPC)")
    running.add_argument("--served-name", help="the OpenAI model id")
    running.add_argument("--api-key-env", metavar="NAME", help="the variable holding the front end's API key")
    running.add_argument("--frontend-pid", type=int, help="the front end's process (its CPU per token)")
    args = parser.parse_args()
    if args.triton:
        missing = [flag for flag in ("openai", "model", "tokenizer") if not getattr(args, flag)]
        if missing:
            parser.error(f"--triton needs --{', --'.join(missing)}")
        key = os.environ.get(args.api_key_env, "") if args.api_key_env else "unused"
        print(f"'{args.model}' at {args.triton} and {args.openai}, {NEW_TOKENS} new tokens x 1 and 8 streams, "
              f"{args.rounds} rounds (median)", flush=True)
        results = asyncio.run(bench(args.triton, args.model, args.served_name or args.model, args.openai, key,
                                    args.tokenizer, args.rounds, args.frontend_pid))
        report([(args.model, streams, row) for streams, row in results.items()])
        return
    backends = args.backend or ["vllm", "pytorch"]

    from launcher.query import connect
    from tests.frontend.conftest import KEY, NAMES, frontend_command, started
    from tests.vllm.conftest import render, triton

    models = {**NAMES, "source": "source"}
    root = Path(tempfile.mkdtemp(prefix="openai-bench-"))
    deps = {name: render(root / name, f"model.served_name={models[name]}", export=True,
                         backend="pytorch" if name == "source" else name) for name in backends}
    if "source" in deps:
        source_repository(deps["source"], args.interval_ms / 1000)
    print(f"SmolLM2-135M-Instruct, {NEW_TOKENS} new tokens x 1 and 8 streams, {args.rounds} rounds (median); "
          f"logs in {root}", flush=True)

    def command(name: str) -> list[str]:
        argv = frontend_command(served.grpc, "pytorch" if name == "source" else name)
        argv[argv.index("--model") + 1] = models[name]
        return argv

    rows = []
    # the vllm deployment's backend directory holds the python backend too: it goes first
    with triton(root, sorted(deps.values(), key=lambda dep: dep.spec.backend.name != "vllm"), ready=False) as served, \
            contextlib.ExitStack() as stack:
        fronts = {name: stack.enter_context(started(command(name), root / f"openai-{name}.log")) for name in backends}
        served.process.wait_ready(served.grpc, 600)
        for name, (process, url) in fronts.items():
            client, _, interface = connect(served.grpc, "grpc", models[name], 60)
            client.close()
            results = asyncio.run(bench(served.grpc, models[name], "smollm2", url, KEY,
                                        str(interface.tokenizer_dir), args.rounds, process.pid))
            rows += [(name, streams, row) for streams, row in results.items()]
    report(rows)


def report(rows: list[tuple[str, int, Row]]) -> None:
    print(f"{'backend':>8} {'streams':>7} | {'gRPC tok/s':>10} {'OpenAI tok/s':>12} | {'ratio':>6} {'(IQR)':>13} | "
          f"{'TTFT delta':>10} {'(IQR)':>15} | {'front end CPU':>13}")
    for name, streams, row in rows:
        (low, ratio, high), (early, delta, late) = row.ratio, (value * 1000 for value in row.ttft_delta)
        print(f"{name:>8} {streams:>7} | {row.grpc_rate:10.1f} {row.api_rate:12.1f} | {ratio:5.3f}x "
              f"({low:.3f}-{high:.3f}) | {delta:+8.1f}ms ({early:+5.1f} {late:+5.1f} ms) | "
              f"{row.cpu_per_token * 1e6:7.0f} us/tok")
    print("(ratio, TTFT delta: medians of the rounds' paired values, interquartile range in brackets; targets: "
          "ratio >= 0.97x, TTFT delta <= +5 ms; the front end's chat template is inside its TTFT)")

if __name__ == "__main__":
    main()
