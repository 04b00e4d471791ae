"""Local target: ``tritonserver`` as a child process on this machine."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.spec import TargetSpec


@dataclass
class LocalTargetSpec(TargetSpec):
    name: str = "local"
    tritonserver: str | None = None  # None: the binary shipped in the nvidia-pytriton wheel


def server_command(dep: Deployment, backend: Backend) -> list[str]:
    """The server's argv; the wheel's server gets the backend directory ``run`` assembles."""
    from launcher.triton import find_triton

    triton = find_triton(dep.spec.target.tritonserver)
    command = backend.server_args(dep, str(triton.binary), str(dep.paths.repository.resolve()))
    if triton.root is not None:
        command.append(f"--backend-directory={dep.paths.backends.resolve()}")
    if dep.spec.hardware.gpu is None:
        command += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
    return command


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
        from launcher.serve import serve
        from launcher.server import TritonProcess, resolve_ports
        from launcher.triton import assemble_backends, find_triton, require_numpy_below_2, require_triton

        require_numpy_below_2()
        triton = require_triton(find_triton(dep.spec.target.tritonserver))
        dep = replace(dep, spec=replace(dep.spec, server=resolve_ports(dep.spec.server)))
        if triton.root is not None:
            assemble_backends(triton.root, dep.paths.backends)
        serve(dep, TritonProcess(server_command(dep, backend), triton.environment(), dep.paths.server_log))


TARGET = LocalTarget()
