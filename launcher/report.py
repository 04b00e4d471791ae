"""What the launcher prints: the resolved spec, the ordered steps, problems."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from launcher.errors import LauncherError
from launcher.plan import Outcome
from launcher.server import openai_url
from launcher.spec import Action, ServerSpec, to_yaml

if TYPE_CHECKING:
    from launcher.query import Answer

Part = str | tuple[str, str]  # text, or (text, rich style)


class Out:
    """Lines to one stream: through rich (styles, wrapping) on a terminal, where styles show; as plain text
    elsewhere, without importing rich. Text is never parsed as markup, so any value prints as it is."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._console: Any = None

    def line(self, *parts: Part) -> None:
        if not self.stream.isatty():
            print("".join(p if isinstance(p, str) else p[0] for p in parts), file=self.stream, flush=True)
            return
        from rich.console import Console
        from rich.text import Text

        if self._console is None:
            self._console = Console(file=self.stream, soft_wrap=True, highlight=False, emoji=False)
        text = Text()
        for part in parts:
            text.append(*((part,) if isinstance(part, str) else part))
        self._console.print(text)
        self.stream.flush()


out, err = Out(sys.stdout), Out(sys.stderr)


def print_problems(error: LauncherError) -> None:
    for problem in error.problems:
        err.line(("error", "bold red"), f" {problem}")


def print_plan(outcome: Outcome) -> None:
    out.line((to_yaml(outcome.spec), "dim"))
    out.line((f"Plan for {outcome.spec.name}", "bold"), f" ({len(outcome.steps)} steps)")
    for number, step in enumerate(outcome.steps, 1):
        out.line(f"{number}. ", (step.kind, "cyan"), f" on {step.where}", (" (done)", "green") if step.done else "",
                 f": {step.description}")
        if step.command:
            out.line("   $ " + shlex.join(step.command))
    if outcome.estimate is not None:
        est, hw = outcome.estimate, outcome.spec.hardware
        device = "GPU" if hw.gpu else "host"
        out.line(("Bounds", "bold"), f" ({hw.memory_bandwidth_gbps:g} GB/s, {hw.memory_gb:g} GB per {device}): "
                 f"{est.weights_gb:.2f} GB of weights per {device}; decode <= {est.decode_tokens_per_s:,.0f} "
                 f"tokens/s per sequence; the KV cache holds ~{est.kv_sequences:,} sequences of "
                 f"{est.sequence_tokens:,} tokens")
    if outcome.placement:
        hw = outcome.spec.hardware
        out.line(("GPUs", "bold"), f" ({len(outcome.placement)} workers on {hw.name}: {hw.nodes} x "
                 f"{hw.gpus_per_node} {hw.gpu})")
        for where in outcome.placement:
            out.line(f"   node {where.node} GPU {where.gpu}: {where.worker}")


def print_outcome(outcome: Outcome) -> None:
    action = outcome.spec.action
    if action == Action.plan:
        print_plan(outcome)
    elif action == Action.export:
        state = "cache hit" if outcome.export_cached else "exported"
        out.line(f"{state} in {outcome.export_seconds:.2f} s: {outcome.export_dir}")
    elif action == Action.render:
        out.line(f"rendered: {outcome.output_dir}")
    else:
        out.line(f"deployment: {outcome.output_dir}")


def say(text: str) -> None:
    out.line(text)


def print_starting(pid: int, server: ServerSpec, log: Path) -> None:
    say(f"starting tritonserver (pid {pid}): http {server.host}:{server.http_port}, "
        f"grpc {server.host}:{server.grpc_port}, metrics {server.host}:{server.metrics_port}; log {log}")


def print_frontend_starting(pid: int, url: str, log: Path) -> None:
    say(f"starting openai front end (pid {pid}): {url}; log {log}")


def print_ready(seconds: float) -> None:
    say(f"ready in {seconds:.1f} s")


def print_smoke(prompt: str, answer: Answer) -> None:
    say(f"prompt: {prompt}")
    say(f"answer: {answer.text.strip()}")
    rate = f", {answer.tokens} tokens, {answer.tokens_per_s:.1f} tokens/s" if answer.tokens_per_s else ""
    say(f"latency {answer.latency_s:.2f} s{rate}")


TRY_PROMPT = shlex.quote("What is the capital of France?")


def print_serving(model: str, server: ServerSpec, host: str | None = None, until: str = " until Ctrl-C") -> None:
    """Where clients reach the deployment (``host``: the server's, when it is not ``server.host``)."""
    host = host or server.host
    say(f"serving '{model}'{until}; try: llm-query --url {host}:{server.grpc_port} --model {model} {TRY_PROMPT}")
    if server.openai:
        print_openai(model, host, server)


def print_openai(model: str, host: str, server: ServerSpec) -> None:
    say(f"openai {openai_url(host, server.openai_port)} (model '{model}'); try: llm-query --openai --url "
        f"{host}:{server.openai_port} --model {model} {TRY_PROMPT}")


def print_frontend_serving(model: str, server: ServerSpec) -> None:
    say(f"serving '{model}' of the Triton at {server.triton_url} until Ctrl-C")
    print_openai(model, server.host, server)


def print_stopped(reason: str, what: str = "tritonserver") -> None:
    say(f"{reason}: {what} stopped")
