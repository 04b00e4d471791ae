"""The OpenAI front end's overhead: tokens/s and time to first token through it vs straight gRPC to Triton.

One run: SmolLM2-135M-Instruct on the CPU backends (both by default, one ``tritonserver`` as the front end's
tests serve them), each behind its own front end (``python -m launcher.frontend``). For 1 and 8 concurrent
streams x 64 new tokens (greedy, ``ignore_eos``), the same chat is asked (a) straight over gRPC with
``tritonclient``'s asyncio client (the chat template applied by the bench) and (b) as a streamed chat
completion through the front end (``httpx``, server-sent events; the front end applies the template).
Rounds alternate (a) and (b) so both see the same machine; the median round counts. Tokens are the model's
own counts (``num_output_tokens``; ``usage`` with ``include_usage``). Targets: (b)/(a) >= 0.97x tokens/s,
TTFT within +5 ms. Usage: ``python bench/openai_bench.py [--backend vllm] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEW_TOKENS = 64
CONCURRENCY = (1, 8)
QUESTION = "Write a long story about a dragon who lives in Paris."
Stream = Callable[[], Awaitable[tuple[float, int]]]  # one request: (TTFT s, generated tokens)


class Row(NamedTuple):
    grpc_rate: float  # tokens/s
    grpc_ttft: float  # s
    api_rate: float
    api_ttft: float
    cpu_per_token: float  # the front end's CPU seconds per token it streamed


async def batch(one: Stream, streams: int) -> tuple[float, float, int]:
    """``streams`` requests at once: generated tokens/s over the wall time, mean TTFT, tokens."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - start
    tokens = sum(count for _, count in results)
    return tokens / wall, statistics.mean(ttft for ttft, _ in results), tokens


async def compare(direct: Stream, openai: Stream, rounds: int, cpu: Callable[[], float]) -> dict[int, Row]:
    """Median tokens/s and TTFT per concurrency, the two paths alternating round by round; and the front
    end's CPU time per token it streamed (``cpu``: its CPU seconds so far)."""
    found: dict[int, Row] = {}
    for streams in CONCURRENCY:
        await batch(direct, streams), await batch(openai, streams)  # warm-up
        runs: dict[str, list[tuple[float, float, int]]] = {"grpc": [], "openai": []}
        used = 0.0
        for _ in range(rounds):
            runs["grpc"].append(await batch(direct, streams))
            before = cpu()
            runs["openai"].append(await batch(openai, streams))
            used += cpu() - before
        medians = {name: (statistics.median(r for r, _, _ in got), statistics.median(t for _, t, _ in got))
                   for name, got in runs.items()}
        found[streams] = Row(*medians["grpc"], *medians["openai"], used / sum(n for _, _, n in runs["openai"]))
    return found


async def bench(grpc: str, model: str, served_name: str, url: str, key: str, tokenizer_dir: str,
                rounds: int, pid: int) -> dict[int, Row]:
    import httpx
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
    limits = httpx.Limits(max_connections=max(CONCURRENCY), max_keepalive_connections=max(CONCURRENCY))
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                                 limits=limits) as client:
        while (await client.get(url.removesuffix("/v1") + "/health/ready")).status_code != 200:
            await asyncio.sleep(0.2)  # the front end loads the tokenizer once Triton is ready

        async def openai() -> tuple[float, int]:
            start, first, tokens = time.perf_counter(), None, 0
            async with client.stream("POST", "/chat/completions", json=body) as reply:
                reply.raise_for_status()
                async for line in reply.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
            return first or 0.0, tokens

        try:
            front_end = psutil.Process(pid)
            return await compare(direct, openai, rounds, lambda: sum(front_end.cpu_times()[:2]))
        finally:
            await upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=("vllm", "pytorch"),
                        help="backend(s) to measure (default: both)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (median)")
    args = parser.parse_args()
    backends = args.backend or ["vllm", "pytorch"]

    from launcher.query import connect
    from tests.frontend.conftest import KEY, NAMES, frontend_command, started
    from tests.vllm.conftest import render, triton

    root = Path(tempfile.mkdtemp(prefix="openai-bench-"))
    deps = [render(root / name, f"model.served_name={NAMES[name]}", export=True, backend=name) for name in backends]
    print(f"SmolLM2-135M-Instruct, {NEW_TOKENS} new tokens x 1 and 8 streams, {args.rounds} rounds (median); "
          f"logs in {root}", flush=True)
    deps.sort(key=lambda dep: dep.spec.backend.name != "vllm")  # the vllm one's backends hold python too
    rows = []
    with triton(root, deps, ready=False) as served, contextlib.ExitStack() as stack:
        fronts = {name: stack.enter_context(started(frontend_command(served.grpc, name), root / f"openai-{name}.log"))
                  for name in backends}
        served.process.wait_ready(served.grpc, 600)
        for name, (process, url) in fronts.items():
            client, _, interface = connect(served.grpc, "grpc", NAMES[name], 60)
            client.close()
            results = asyncio.run(bench(served.grpc, NAMES[name], "smollm2", url, KEY, str(interface.tokenizer_dir),
                                        args.rounds, process.pid))
            rows += [(name, streams, row) for streams, row in results.items()]
    print(f"{'backend':>8} {'streams':>7} | {'gRPC tok/s':>10} {'OpenAI tok/s':>12} {'ratio':>6} | "
          f"{'gRPC TTFT':>9} {'OpenAI TTFT':>11} {'delta':>8} | {'front end CPU':>13}")
    for name, streams, row in rows:
        ratio, delta_ms = row.api_rate / row.grpc_rate, (row.api_ttft - row.grpc_ttft) * 1000
        print(f"{name:>8} {streams:>7} | {row.grpc_rate:10.1f} {row.api_rate:12.1f} {ratio:5.3f}x | "
              f"{row.grpc_ttft * 1000:7.1f}ms {row.api_ttft * 1000:9.1f}ms {delta_ms:+6.1f}ms | "
              f"{row.cpu_per_token * 1e6:7.0f} us/tok")
    print("(targets: ratio >= 0.97x, TTFT delta <= +5 ms; the front end's chat template is inside its TTFT)")


if __name__ == "__main__":
    main()
