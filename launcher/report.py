"""What the launcher prints: the resolved spec, the ordered steps, problems."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from launcher.errors import LauncherError
from launcher.plan import Outcome
from launcher.spec import Action, ServerSpec, to_yaml

if TYPE_CHECKING:
    from launcher.query import Answer

console = Console(soft_wrap=True, highlight=False)


def print_problems(err: LauncherError) -> None:
    stderr = Console(stderr=True, soft_wrap=True, highlight=False)
    for problem in err.problems:
        stderr.print(f"[bold red]error[/] {escape(str(problem))}", markup=True, emoji=False)


def print_plan(outcome: Outcome) -> None:
    console.print(to_yaml(outcome.spec), markup=False, emoji=False, style="dim")
    console.print(f"[bold]Plan for {escape(outcome.spec.name)}[/] ({len(outcome.steps)} steps)", emoji=False)
    for number, step in enumerate(outcome.steps, 1):
        state = " [green](done)[/]" if step.done else ""
        console.print(f"{number}. [cyan]{step.kind}[/] on {step.where}{state}: {escape(step.description)}",
                      markup=True, emoji=False)
        if step.command:
            console.print("   $ " + shlex.join(step.command), markup=False, emoji=False)
    if outcome.placement:
        hw = outcome.spec.hardware
        console.print(f"[bold]GPUs[/] ({len(outcome.placement)} workers on {escape(hw.name)}: {hw.nodes} x "
                      f"{hw.gpus_per_node} {escape(str(hw.gpu))})", markup=True, emoji=False)
        for where in outcome.placement:
            console.print(f"   node {where.node} GPU {where.gpu}: {where.worker}", markup=False, emoji=False)


def print_outcome(outcome: Outcome) -> None:
    action = outcome.spec.action
    if action == Action.plan:
        print_plan(outcome)
    elif action == Action.export:
        state = "cache hit" if outcome.export_cached else "exported"
        console.print(f"{state} in {outcome.export_seconds:.2f} s: {outcome.export_dir}", markup=False)
    elif action == Action.render:
        console.print(f"rendered: {outcome.output_dir}", markup=False)
    else:
        console.print(f"deployment: {outcome.output_dir}", markup=False)
    sys.stdout.flush()


def say(text: str) -> None:
    console.print(text, markup=False, emoji=False)
    sys.stdout.flush()


def print_starting(pid: int, server: ServerSpec, log: Path) -> None:
    say(f"starting tritonserver (pid {pid}): http {server.host}:{server.http_port}, "
        f"grpc {server.host}:{server.grpc_port}, metrics {server.host}:{server.metrics_port}; log {log}")


def print_ready(seconds: float) -> None:
    say(f"ready in {seconds:.1f} s")


def print_smoke(prompt: str, answer: Answer) -> None:
    say(f"prompt: {prompt}")
    say(f"answer: {answer.text.strip()}")
    rate = f", {answer.tokens} tokens, {answer.tokens_per_s:.1f} tokens/s" if answer.tokens_per_s else ""
    say(f"latency {answer.latency_s:.2f} s{rate}")


def print_serving(model: str, server: ServerSpec) -> None:
    say(f"serving '{model}' until Ctrl-C; try: llm-query --url {server.host}:{server.grpc_port} --model {model} "
        f"{shlex.quote('What is the capital of France?')}")


def print_stopped(reason: str) -> None:
    say(f"{reason}: tritonserver stopped")
