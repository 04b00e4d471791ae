"""Docker target: the exact ``docker run`` of NVIDIA's Triton container for the backend, as ``launch.sh``."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import LauncherError, Problem, user_error
from launcher.server import PORT_KEYS
from launcher.spec import TargetSpec

REPOSITORY_MOUNT = "/triton/model_repository"


@dataclass
class ContainerTargetSpec(TargetSpec):
    """Targets that run NVIDIA's Triton container: ``<registry>:<tag>-<suffix of the backend>``."""

    registry: str = "nvcr.io/nvidia/tritonserver"
    tag: str = "25.01"
    suffixes: dict[str, str] = field(default_factory=lambda: {
        "pytorch": "pyt-python-py3", "vllm": "vllm-python-py3", "trtllm": "trtllm-python-py3"})


@dataclass
class DockerTargetSpec(ContainerTargetSpec):
    name: str = "docker"
    shm_size: str = "2g"  # docker --shm-size (the Python backend passes tensors through shared memory)
    extra_args: list[str] = field(default_factory=list)  # added to `docker run` before the image


def image(dep: Deployment) -> str:
    target = dep.spec.target
    return f"{target.registry}:{target.tag}-{target.suffixes[dep.spec.backend.name]}"


def fixed_ports(dep: Deployment) -> None:
    """Ports are fixed when the launch files are written for another host: ``0`` (pick one) cannot be."""
    problems = [Problem(f"server.{key}", f"0 (pick a free port) needs the server on this machine; "
                        f"target={dep.spec.target.name} fixes ports when rendering", f"set server.{key}=<port>")
                for key in PORT_KEYS if getattr(dep.spec.server, key) == 0]
    if problems:
        raise LauncherError(*problems)


def bind_all_interfaces(args: list[str], host: str) -> list[str]:
    """Inside a container or on a cluster node the server listens on every interface."""
    return [a.replace(f"-address={host}", "-address=0.0.0.0") for a in args]


def docker_command(dep: Deployment, plan: Plan, backend: Backend) -> list[str]:
    """``docker run``: the node's GPUs, repository and export mounted read-only, ports published on
    ``server.host``; the export keeps its path inside, so the repository's references to it hold."""
    fixed_ports(dep)
    spec, hw, server = dep.spec, dep.spec.hardware, dep.spec.server
    repository = dep.paths.repository.resolve()
    export_dir = plan.export.directory.expanduser().resolve()
    devices = ",".join(str(i) for i in range(hw.gpus_per_node))
    gpus = ["--gpus", f'"device={devices}"'] if hw.gpu else []
    ports = [flag for key in PORT_KEYS for flag in ("-p", f"{server.host}:{getattr(server, key)}:"
                                                           f"{getattr(server, key)}")]
    return [
        "docker", "run", "--rm", "--init", *gpus,
        f"--shm-size={spec.target.shm_size}", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
        *ports,
        "-v", f"{repository}:{REPOSITORY_MOUNT}:ro",
        "-v", f"{export_dir}:{export_dir}:ro",
        *spec.target.extra_args,
        image(dep),
        *bind_all_interfaces(backend.server_args(dep, "tritonserver", REPOSITORY_MOUNT), server.host),
    ]


class DockerTarget:
    name = "docker"
    spec_class = DockerTargetSpec

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str]:
        from launcher.render import environment

        text = environment().get_template("targets/docker/launch.sh.j2").render(
            spec=dep.spec, image=image(dep), command=shlex.join(docker_command(dep, plan, backend)))
        return {"launch.sh": text}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", f"run {image(dep)} with the repository mounted read-only",
                    tuple(docker_command(dep, plan, backend)), where="target host")

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        raise user_error("target", "action=serve with target=docker is not available here (no Docker engine)",
                         f"run {dep.paths.output_dir}/launch.sh on a GPU host with Docker")


TARGET = DockerTarget()
