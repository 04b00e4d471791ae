"""Local target: ``tritonserver`` as a child process on this machine."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import user_error
from launcher.spec import TargetSpec


@dataclass
class LocalTargetSpec(TargetSpec):
    name: str = "local"
    tritonserver: str | None = None  # None: the binary shipped in the nvidia-pytriton wheel


def server_command(dep: Deployment, backend: Backend) -> list[str]:
    from launcher.triton import find_triton

    triton = find_triton(dep.spec.target.tritonserver)
    return [*backend.server_args(dep, str(triton.binary), str(dep.paths.repository.resolve())),
            f"--backend-directory={dep.paths.backends.resolve()}"]


class LocalTarget:
    name = "local"
    spec_class = LocalTargetSpec

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str]:
        from launcher.render import environment
        from launcher.triton import find_triton

        triton = find_triton(dep.spec.target.tritonserver)
        text = environment().get_template("targets/local/launch.sh.j2").render(
            spec=dep.spec, command=shlex.join(server_command(dep, backend)), env=triton.environment())
        return {"launch.sh": text}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", f"start tritonserver locally, log to {dep.paths.server_log}",
                    tuple(server_command(dep, backend)))

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        raise user_error("action", f"{dep.spec.action.value} is not available yet",
                         "use action=plan or action=render")


TARGET = LocalTarget()
