"""Docker target: the exact ``docker run`` of NVIDIA's Triton container for the backend."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import user_error
from launcher.spec import TargetSpec

REPOSITORY_MOUNT = "/triton/model_repository"


@dataclass
class ContainerTargetSpec(TargetSpec):
    """Targets that run NVIDIA's Triton container: ``<registry>:<tag>-<suffix of the backend>``."""

    registry: str = "nvcr.io/nvidia/tritonserver"
    tag: str = "25.01"
    suffixes: dict[str, str] = field(default_factory=lambda: {
        "pytorch": "py3", "vllm": "vllm-python-py3", "trtllm": "trtllm-python-py3"})


@dataclass
class DockerTargetSpec(ContainerTargetSpec):
    name: str = "docker"
    shm_size: str = "2g"
    extra_args: list[str] = field(default_factory=list)


def image(dep: Deployment) -> str:
    target = dep.spec.target
    return f"{target.registry}:{target.tag}-{target.suffixes[dep.spec.backend.name]}"


def docker_command(dep: Deployment, plan: Plan, backend: Backend) -> list[str]:
    spec, hw = dep.spec, dep.spec.hardware
    server = spec.server
    repository = dep.paths.repository.resolve()
    export_dir = Path(plan.export.directory)
    gpus = ["--gpus", f"\"device={','.join(str(i) for i in range(hw.gpus_per_node))}\""] if hw.gpu else []
    return [
        "docker", "run", "--rm", "--init", *gpus,
        f"--shm-size={spec.target.shm_size}", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
        "-p", f"{server.host}:{server.http_port}:{server.http_port}",
        "-p", f"{server.host}:{server.grpc_port}:{server.grpc_port}",
        "-p", f"{server.host}:{server.metrics_port}:{server.metrics_port}",
        "-v", f"{repository}:{REPOSITORY_MOUNT}:ro",
        "-v", f"{export_dir}:{export_dir}:ro",
        *spec.target.extra_args,
        image(dep),
        *bind_all_interfaces(backend.server_args(dep, "tritonserver", REPOSITORY_MOUNT), server.host),
    ]


def bind_all_interfaces(args: list[str], host: str) -> list[str]:
    """Inside a container the server listens on every interface; the host side publishes ports."""
    return [a.replace(f"-address={host}", "-address=0.0.0.0") for a in args]


class DockerTarget:
    name = "docker"
    spec_class = DockerTargetSpec

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str]:
        from launcher.render import environment

        text = environment().get_template("targets/docker/launch.sh.j2").render(
            spec=dep.spec, command=shlex.join(docker_command(dep, plan, backend)))
        return {"launch.sh": text}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", f"run {image(dep)} with the repository mounted read-only",
                    tuple(docker_command(dep, plan, backend)), where="target host")

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        raise user_error("target", "action=serve with target=docker is not available here (no Docker engine)",
                         f"run {dep.paths.output_dir}/launch.sh on a GPU host with Docker")


TARGET = DockerTarget()
