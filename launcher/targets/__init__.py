"""Targets say where and how the server runs: every module here that defines ``TARGET`` is one, and
installed packages add more through the ``llm_launch.targets`` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from launcher.errors import user_error
from launcher.plugins import discover
from launcher.spec import TargetSpec

if TYPE_CHECKING:
    from launcher.backends.base import Backend
    from launcher.deployment import Deployment
    from launcher.errors import Problem
    from launcher.plan import Launch, Plan


class Target(Protocol):
    name: str
    spec_class: type[TargetSpec]

    def problems(self, dep: Deployment, backend: Backend) -> list[Problem]:
        """The target's own validation rules; they join the generic and the backend's."""
        ...

    def launch(self, dep: Deployment, plan: Plan, backend: Backend) -> Launch:
        """How the server starts: where it listens, the backend's per-rank argv started the target's
        way, the launch files to render; computed once per run, writes nothing."""
        ...

    def run(self, dep: Deployment, plan: Plan, backend: Backend, launch: Launch) -> None:
        """Start the rendered deployment, wait until ready, smoke it; keep serving unless smoke."""
        ...


TARGETS: dict[str, Target] = discover("llm_launch.targets", __path__, __name__, "TARGET")


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise user_error("target.name", f"unknown target '{name}'", f"choose one of {', '.join(TARGETS)}")
    return TARGETS[name]
