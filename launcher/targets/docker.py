"""Docker target: the exact ``docker run`` of NVIDIA's Triton container for the backend, as ``launch.sh``."""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import Problem, user_error
from launcher.plan import Launch, LaunchFile, Plan, Step
from launcher.server import client_host
from launcher.spec import PORT_KEYS, ContainerTargetSpec
from launcher.targets.common import (
    LAUNCH_TEMPLATE,
    chat_template_files,
    container_command,
    container_image,
    fixed_ports,
    frontend_step,
    mpirun,
)

REPOSITORY_MOUNT = "/triton/model_repository"
LAUNCH_FILE = "launch.sh"


@dataclass
class DockerTargetSpec(ContainerTargetSpec):
    name: str = "docker"
    shm_size: str = "2g"  # docker --shm-size (the Python backend passes tensors through shared memory)
    extra_args: list[str] = field(default_factory=list)  # added to `docker run` before the image


def docker_command(dep: Deployment, plan: Plan, image: str, ranks: list[list[str]]) -> list[str]:
    """``docker run``: the node's GPUs, repository and export mounted read-only, ports published on
    ``server.host``; the export keeps its path inside, so the repository's references to it hold."""
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
        image,
        *mpirun(ranks),
    ]


class DockerTarget:
    name = "docker"
    spec_class = DockerTargetSpec

    def problems(self, dep: Deployment, backend: Backend) -> list[Problem]:
        return fixed_ports(dep)

    def launch(self, dep: Deployment, plan: Plan, backend: Backend) -> Launch:
        """The container's ``docker run``, and the OpenAI front end beside it on this host (the launcher's
        Python), in front of the ports the container publishes."""
        image = container_image(dep, backend)
        ranks = backend.server_ranks(dep, plan, container_command(dep, REPOSITORY_MOUNT))
        command = docker_command(dep, plan, image, ranks)
        server = dep.spec.server
        frontend = frontend_step(dep, plan, triton=f"{client_host(server.host)}:{server.grpc_port}", host=server.host,
                                 port=str(server.openai_port), where="target host",
                                 beside="on the host, beside the container")
        script = LaunchFile(LAUNCH_FILE, LAUNCH_TEMPLATE, {
            "spec": dep.spec, "image": image, "command": command, "env": {},
            "frontend": frontend.command if frontend else None, "openai_log": str(dep.paths.openai_log.resolve())},
            executable=True)
        step = Step("launch", f"run {image} with the repository mounted read-only", tuple(command),
                    where="target host")
        return Launch(step, (script, *chat_template_files(dep)), tuple(map(tuple, ranks)), server, frontend=frontend)

    def run(self, dep: Deployment, plan: Plan, backend: Backend, launch: Launch) -> None:
        raise user_error("target", "action=serve with target=docker is not available here (no Docker engine)",
                         f"run {dep.paths.output_dir}/{LAUNCH_FILE} on a GPU host with Docker")


TARGET = DockerTarget()
