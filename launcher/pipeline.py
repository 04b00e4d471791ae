"""The pipeline: compose -> spec -> inspect -> validate -> plan -> export -> render -> launch (action=frontend:
compose -> spec -> validate -> the OpenAI front end alone)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from launcher import validate
from launcher.backends import BACKENDS, get_backend
from launcher.bench.action import problems as bench_problems
from launcher.deployment import Deployment, DeployPaths, resolve
from launcher.errors import LauncherError, Problem, user_error
from launcher.plan import Outcome, Plan, Step
from launcher.sizing import estimate
from launcher.spec import Action, DeploySpec, to_spec, to_yaml
from launcher.targets import get_target

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


def typed_spec(cfg: DictConfig) -> DeploySpec:
    try:
        return to_spec(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise user_error(key, "has no value", f"set it on the command line, e.g. {key}=...") from err


def spec_yaml(spec: DeploySpec) -> str:
    """``spec.yaml``: the resolved spec behind the defaults header that lets Hydra replay it."""
    header = REPLAY_HEADER.format(output_dir=shlex.quote(spec.output_dir), backend=spec.backend.name,
                                  target=spec.target.name)
    return header + to_yaml(spec)


def deploy(cfg: DictConfig, overrides: tuple[str, ...] = ()) -> Outcome:
    """Run the composed spec up to its action; raises LauncherError with every problem found."""
    spec = typed_spec(cfg)
    if spec.action == Action.frontend:
        frontend(Deployment(spec, None, None, None, DeployPaths(Path(spec.output_dir)), overrides))
    dep = resolve(spec, overrides)
    spec = dep.spec  # with what the checkpoint decides (model=auto's lengths)
    backend, target = get_backend(spec.backend.name), get_target(spec.target.name)
    if found := problems(dep):
        raise LauncherError(*found)
    plan = backend.plan(dep)
    plan.lock.update(dep.lock)
    launch = target.launch(dep, plan, backend)
    outcome = Outcome(spec, [*plan.steps, render_step(dep), launch.step, *filter(None, [launch.frontend])],
                      plan.placement,
                      estimate=estimate(dep) if dep.arch is not None else None)
    if spec.action == Action.plan:
        return outcome
    outcome.export_dir = str(plan.export.directory)
    if spec.action != Action.render:
        start = time.perf_counter()
        try:
            outcome.export_cached = backend.export(dep, plan)
        except OSError as err:  # the export cache could not be written (disk full, read-only, ...)
            raise user_error("cache_dir", f"cannot write the export into '{dep.cache_root}': {err.strerror}",
                             "free space or choose another cache_dir; nothing was left half-written") from None
        outcome.export_seconds = time.perf_counter() - start
    if spec.action == Action.export:
        return outcome
    if spec.action == Action.bench and spec.bench.url:  # attach: measure what serves there, render nothing
        outcome.output_dir = spec.output_dir
        bench(dep, plan)
        return outcome
    from launcher.render import render

    outcome.output_dir = str(render(dep, plan, launch, backend, spec_yaml(spec)))
    if spec.action in (Action.serve, Action.smoke):
        target.run(dep, plan, backend, launch)
    elif spec.action == Action.bench:
        bench(dep, plan)
    return outcome


def bench(dep: Deployment, plan: Plan) -> None:
    """aiperf against ``bench.url``, or against the rendered spec served by a child ``llm-launch action=serve``."""
    from launcher.bench import action
    from launcher.server import ChildProcess, resolve_ports

    if dep.spec.bench.url:
        action.measure(dep.spec, plan.export.directory, dep.spec.bench.url)
        return
    server = resolve_ports(dep.spec.server)
    log = action.bench_dir(dep.paths.output_dir) / action.SERVE_LOG
    with ChildProcess(action.serve_command(dep.paths.output_dir, server), {}, log) as child:
        assert child.process is not None
        action.measure(dep.spec, plan.export.directory, action.endpoint(server), child.process)


def frontend(dep: Deployment) -> NoReturn:
    """action=frontend: no checkpoint, no render; the OpenAI front end in front of ``server.triton_url`` until
    a signal stops it."""
    if found := validate.frontend_problems(dep):
        raise LauncherError(*found)
    from launcher.serve import frontend_only

    frontend_only(dep)


def problems(dep: Deployment) -> list[Problem]:
    """Every problem: the generic rules', the backend's (once the architecture is known) and the target's."""
    backend, target = get_backend(dep.spec.backend.name), get_target(dep.spec.target.name)
    if found := validate.spec_problems(dep):
        return found  # the other rules compute with these values
    readers = {name: plugin.checkpoint_formats for name, plugin in BACKENDS.items()}
    tables = {name: plugin.architecture_tables for name, plugin in BACKENDS.items()}
    found = [*validate.problems(dep), *validate.checkpoint_readable(dep, backend.name, readers),
             *validate.architecture_loadable(dep, backend.name, tables)]
    if dep.arch is not None:
        found += backend.problems(dep)
    return found + target.problems(dep, backend) + bench_problems(dep.spec)


def render_step(dep: Deployment) -> Step:
    return Step("render", f"model repository + launch files -> {dep.paths.output_dir}",
                dep.launcher_command("render"))
