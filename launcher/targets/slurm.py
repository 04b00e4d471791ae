"""Slurm target: an ``sbatch`` script that starts the server on an allocated node."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import user_error
from launcher.spec import TargetSpec


@dataclass
class SlurmTargetSpec(TargetSpec):
    name: str = "slurm"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    container_image: str | None = None  # pyxis/enroot image; None runs the local tritonserver
    container_mounts: list[str] | None = None
    tritonserver: str | None = None


class SlurmTarget:
    name = "slurm"
    spec_class = SlurmTargetSpec

    def server_command(self, dep: Deployment, backend: Backend) -> list[str]:
        from launcher.triton import find_triton

        binary = "tritonserver" if dep.spec.target.container_image else str(
            find_triton(dep.spec.target.tritonserver).binary)
        return backend.server_args(dep, binary, str(dep.paths.repository.resolve()))

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str]:
        from launcher.render import environment

        spec = dep.spec
        text = environment().get_template("targets/slurm/job.sbatch.j2").render(
            spec=spec, command=shlex.join(self.server_command(dep, backend)),
            log=str(dep.paths.output_dir.resolve() / "slurm-%j.out"))
        return {"job.sbatch": text}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", "submit the Slurm job",
                    ("sbatch", str(dep.paths.output_dir.resolve() / "job.sbatch")), where="cluster")

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        raise user_error("target", "action=serve with target=slurm is not available yet",
                         f"submit {dep.paths.output_dir}/job.sbatch with sbatch")


TARGET = SlurmTarget()
