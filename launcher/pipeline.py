"""The pipeline: compose -> spec -> inspect -> validate -> plan -> export -> render -> launch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from launcher import validate
from launcher.backends import get_backend
from launcher.backends.base import Placement, Step
from launcher.deployment import Deployment, resolve
from launcher.errors import LauncherError, user_error
from launcher.spec import Action, DeploySpec, to_spec, to_yaml
from launcher.targets import TARGETS

REPLAY_HEADER = """\
# Resolved deployment spec written by llm-launch; re-render it with
#   llm-launch --config-dir={output_dir} --config-name=spec action=render
defaults:
  - base_config
  - backend: base_{backend}
  - target: base_{target}
  - override hydra/job_logging: disabled
  - override hydra/hydra_logging: disabled
  - _self_
hydra:
  output_subdir: null
  run:
    dir: .
  job:
    chdir: false
"""


@dataclass
class Outcome:
    spec: DeploySpec
    steps: list[Step]
    placement: list[Placement] = field(default_factory=list)
    output_dir: str | None = None
    export_dir: str | None = None
    export_cached: bool = False  # the export was already in the cache (or used in place)
    export_seconds: float = 0.0


def typed_spec(cfg: DictConfig) -> DeploySpec:
    try:
        return to_spec(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise user_error(key, "has no value", f"set it on the command line, e.g. {key}=...") from err


def spec_yaml(spec: DeploySpec) -> str:
    """``spec.yaml``: the resolved spec behind the defaults header that lets Hydra replay it."""
    header = REPLAY_HEADER.format(output_dir=spec.output_dir, backend=spec.backend.name, target=spec.target.name)
    return header + to_yaml(spec)


def deploy(cfg: DictConfig, overrides: tuple[str, ...] = ()) -> Outcome:
    """Run the composed spec up to its action; raises LauncherError with every problem found."""
    spec = typed_spec(cfg)
    dep = resolve(spec, overrides)
    problems = validate.problems(dep)
    if problems:
        raise LauncherError(*problems)
    backend, target = get_backend(spec.backend.name), TARGETS[spec.target.name]
    plan = backend.plan(dep)
    steps = [*plan.steps, render_step(dep), target.launch_step(dep, plan, backend)]
    if spec.action == Action.plan:
        return Outcome(spec, steps, plan.placement)
    outcome = Outcome(spec, steps, plan.placement, export_dir=str(plan.export.directory))
    if spec.action != Action.render:
        outcome.export_cached = plan.export.key is None or plan.export.directory.is_dir()
        start = time.perf_counter()
        backend.export(dep, plan)
        outcome.export_seconds = time.perf_counter() - start
    if spec.action == Action.export:
        return outcome
    from launcher.render import render

    outcome.output_dir = str(render(dep, plan, target.launch_files(dep, plan, backend), spec_yaml(spec)))
    if spec.action in (Action.serve, Action.smoke):
        target.run(dep, plan, backend)
    return outcome


def render_step(dep: Deployment) -> Step:
    return Step("render", f"model repository + launch files -> {dep.paths.output_dir}",
                dep.launcher_command("render"))
