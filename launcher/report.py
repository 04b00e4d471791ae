"""What the launcher prints: the resolved spec, the ordered steps, problems."""

from __future__ import annotations

import shlex
import sys

from rich.console import Console
from rich.syntax import Syntax

from launcher.errors import LauncherError
from launcher.pipeline import Outcome, spec_yaml
from launcher.spec import Action

console = Console(soft_wrap=True, highlight=False)


def print_problems(err: LauncherError) -> None:
    stderr = Console(stderr=True, soft_wrap=True, highlight=False)
    for problem in err.problems:
        stderr.print(f"[bold red]error[/] {problem}", markup=True, emoji=False)


def print_plan(outcome: Outcome) -> None:
    body = spec_yaml(outcome.spec).split("_self_\n", 1)[-1].split("chdir: false\n", 1)[-1]
    console.print(Syntax(body, "yaml", theme="ansi_dark", background_color="default"))
    console.print(f"[bold]Plan for {outcome.spec.name}[/] ({len(outcome.steps)} steps)")
    for number, step in enumerate(outcome.steps, 1):
        state = " [green](done)[/]" if step.done else ""
        console.print(f"{number}. [cyan]{step.kind}[/] on {step.where}{state}: {step.description}",
                      markup=True, emoji=False)
        if step.command:
            console.print("   $ " + shlex.join(step.command), markup=False, emoji=False)


def print_outcome(outcome: Outcome) -> None:
    action = outcome.spec.action
    if action == Action.plan:
        print_plan(outcome)
    elif action == Action.export:
        console.print(f"export: {outcome.output_dir}", markup=False)
    elif action == Action.render:
        console.print(f"rendered: {outcome.output_dir}", markup=False)
    sys.stdout.flush()
