"""Targets say where and how the server runs: every module here that defines ``TARGET`` is one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from launcher.plugins import discover
from launcher.spec import TargetSpec

if TYPE_CHECKING:
    from launcher.backends.base import Backend, Plan, Step
    from launcher.deployment import Deployment


class Target(Protocol):
    name: str
    spec_class: type[TargetSpec]

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str | Path]:
        """Relative path -> text (or a file to copy) written next to the model repository."""
        ...

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        """The plan step that starts the server, with its exact command."""
        ...

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        """Start the rendered deployment, wait until ready, smoke it; keep serving unless smoke."""
        ...


TARGETS: dict[str, Target] = discover(__path__, __name__, "TARGET")
TARGET_SPECS = {name: target.spec_class for name, target in TARGETS.items()}
