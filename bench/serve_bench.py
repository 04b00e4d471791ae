"""Triton-served tokens/s vs the same model called directly with ``transformers`` in this process.

One run: render SmolLM2-135M-Instruct (bf16 unless a ``precision=`` override says otherwise) with the
launcher, start the real ``tritonserver`` (start-to-ready time), then for 1 request, 8 concurrent
requests and 8 sequential requests compare greedy tokens/s through Triton (gRPC clients, one per
request) with ``generate`` on the same prompts (a batch of 8, left-padded, for the concurrent case), and
8 requests arriving 200 ms apart: mean latency of the served model (continuous batching) vs a batcher
that runs each batch to its end over ``generate`` (timed on the direct model).
Every case runs once untimed first (CPU kernels are created per shape), then served and direct
alternate over the rounds, and the best round counts.
Usage: python bench/serve_bench.py [rounds] [llm-launch overrides, e.g. backend.max_queue_delay_us=20000]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from launcher.backends import get_backend
from launcher.backends.base import serving_dtype
from launcher.cli import CONF_DIR
from launcher.deployment import resolve
from launcher.interfaces import chat_prompt
from launcher.pipeline import deploy
from launcher.query import Options, ask
from launcher.server import TritonProcess, resolve_ports
from launcher.spec import to_spec
from launcher.targets import get_target
from launcher.targets.common import serving_environment
from launcher.triton import find_triton

NEW_TOKENS = 64
STAGGER_S = 0.2
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a rainbow forms, step by step.",
    "Describe a walk through a busy market in Paris.",
    "What are the benefits of learning a second language?",
    "Tell me about the history of the bicycle.",
    "Give some advice to someone starting to run.",
    "Describe the life cycle of a butterfly.",
    "Why do people enjoy music? Explain in detail.",
]


def compare(first: Callable[[], int], second: Callable[[], int], rounds: int) -> tuple[float, float]:
    """Best tokens/s of each over ``rounds`` alternating timed runs (each returns the tokens it generated)."""
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for run, found in zip((first, second), rates, strict=True):
            start = time.perf_counter()
            tokens = run()
            found.append(tokens / (time.perf_counter() - start))
    return max(rates[0]), max(rates[1])


class Direct:
    """The served model's own weights, generating in this process as model.py does (greedy, left padding)."""

    def __init__(self, model_dir: str, dtype: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}

    def generate(self, prompts: list[str]) -> int:
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                    add_generation_prompt=True) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or min(self.eos))
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        return sum(next((i for i, t in enumerate(row) if t in self.eos), len(row)) for row in new)


def served(url: str, prompts: list[str], tokenizer: str, gap_s: float = 0.0) -> list[tuple[int, float]]:
    """``prompts`` in the chat template (as ``Direct`` formats them), one gRPC client per request, the
    i-th sent ``i * gap_s`` after the first; (generated tokens, latency) per request."""
    results = [(0, 0.0)] * len(prompts)

    def one(index: int) -> None:
        time.sleep(index * gap_s)
        answer = ask(url, "grpc", "llm", chat_prompt(tokenizer, prompts[index]) or prompts[index],
                     Options(max_tokens=NEW_TOKENS))
        results[index] = (answer.tokens or 0, answer.latency_s)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def batch_and_drain(direct: Direct, prompts: list[str], gap_s: float) -> list[float]:
    """Latencies of requests arriving ``gap_s`` apart at a server that batches whatever waits, then runs the
    batch to its end before it looks again (a dynamic batcher over ``generate``), timed on ``direct``."""
    arrivals = [i * gap_s for i in range(len(prompts))]
    latencies, clock, next_request = [], 0.0, 0
    while next_request < len(prompts):
        clock = max(clock, arrivals[next_request])
        batch = [i for i in range(next_request, len(prompts)) if arrivals[i] <= clock]
        start = time.perf_counter()
        direct.generate([prompts[i] for i in batch])
        clock += time.perf_counter() - start
        latencies += [clock - arrivals[i] for i in batch]
        next_request = batch[-1] + 1
    return latencies


def main(rounds: int = 2, *overrides: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        precision = [] if any(o.startswith("precision=") for o in overrides) else ["precision=bf16"]
        cfg = compose("config", [f"output_dir={out / 'dep'}", *precision, "action=render", *overrides])
    outcome = deploy(cfg)
    spec = to_spec(cfg)
    dep = resolve(replace(spec, server=resolve_ports(replace(spec.server, http_port=0, grpc_port=0,
                                                             metrics_port=0))))
    backend, triton = get_backend(spec.backend.name), find_triton(spec.target.tritonserver)
    assert triton.root is not None, "the bench runs the nvidia-pytriton wheel's tritonserver (render wrote backends/)"
    grpc = f"127.0.0.1:{dep.spec.server.grpc_port}"
    dtype = serving_dtype(dep)
    print(f"model {spec.model.name}, {outcome.export_dir}, {dtype}, {NEW_TOKENS} new tokens, "
          f"torch threads {torch.get_num_threads()}, {rounds} rounds, best counts", flush=True)
    plan = backend.plan(dep)
    backend.export(dep, plan)  # action=render plans the export but does not run it
    direct = Direct(str(outcome.export_dir), dtype)
    launch = get_target("local").launch(dep, plan, backend)
    tokenizer = str(outcome.export_dir)
    environment = serving_environment(dep, build=True)
    with TritonProcess(list(launch.step.command), environment, dep.paths.server_log) as process:
        ready = process.wait_ready(grpc, spec.server.start_timeout_s)
        print(f"start-to-ready: {ready:.1f} s", flush=True)

        def tokens(prompts: list[str]) -> int:
            return sum(count for count, _ in served(grpc, prompts, tokenizer))

        cases = {
            "1 request": (lambda: tokens(PROMPTS[:1]), lambda: direct.generate(PROMPTS[:1])),
            "8 concurrent": (lambda: tokens(PROMPTS), lambda: direct.generate(PROMPTS)),
            "8 sequential": (lambda: sum(tokens([p]) for p in PROMPTS),
                             lambda: sum(direct.generate([p]) for p in PROMPTS)),
        }
        rates = {}
        for name, (serve_run, direct_run) in cases.items():
            serve_run(), direct_run()  # warm up: every shape of this case once
            rate_served, rate_direct = compare(serve_run, direct_run, rounds)
            rates[name] = rate_served
            print(f"{name:>13}: served {rate_served:6.1f} tok/s, direct {rate_direct:6.1f} tok/s, "
                  f"ratio {rate_served / rate_direct:.2f}x", flush=True)
        print(f"batching speedup (served, 8 concurrent vs 8 sequential): "
              f"{rates['8 concurrent'] / rates['8 sequential']:.2f}x")
        continuous = min(statistics.mean(latency for _, latency in served(grpc, PROMPTS, tokenizer, STAGGER_S))
                         for _ in range(rounds))
        drained = min(statistics.mean(batch_and_drain(direct, PROMPTS, STAGGER_S)) for _ in range(rounds))
        print(f"8 requests {STAGGER_S * 1000:.0f} ms apart, mean latency: served (continuous batching) "
              f"{continuous:.2f} s, batch-and-drain over generate {drained:.2f} s, ratio {drained / continuous:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, *sys.argv[2:])
