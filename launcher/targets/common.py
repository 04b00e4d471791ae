"""What several targets share: how ranks start, shell words, fixed ports, NVIDIA's container image, the
OpenAI front end beside the server, and this machine's ``tritonserver`` (local, and Slurm without a container)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import LaunchFile, Plan, ServerCommand, Step
from launcher.server import frontend_command, openai_url
from launcher.spec import Action, ContainerTargetSpec, HostTritonSpec

ALL_INTERFACES = "0.0.0.0"  # inside a container or on a cluster node the server listens on every interface
LAUNCH_TEMPLATE = "targets/launch.sh.j2"  # launch.sh of the local and docker targets


def mpirun(ranks: list[list[str]]) -> list[str]:
    """One command for the ranks: the only one, or ``mpirun`` MPMD with one segment per rank (rank 0
    first), as TensorRT-LLM's ``launch_triton_server.py`` starts them."""
    if len(ranks) == 1:
        return list(ranks[0])
    command = ["mpirun", "--allow-run-as-root"]
    for rank, argv in enumerate(ranks):
        command += [*([":"] if rank else []), "-n", "1", *argv]
    return command


def fixed_ports(dep: Deployment) -> list[Problem]:
    """Ports are fixed when the launch files are written for another host: ``0`` (pick one) cannot be."""
    return [Problem(f"server.{key}", f"0 (pick a free port) needs the server on this machine; "
                    f"target={dep.spec.target.name} fixes ports when rendering", f"set server.{key}=<port>")
            for key in dep.spec.server.port_keys() if getattr(dep.spec.server, key) == 0]


def container_tag(dep: Deployment, backend: Backend) -> str:
    """``target.tag``, or the backend's default for this deployment."""
    target = dep.spec.target
    assert isinstance(target, ContainerTargetSpec)
    return str(target.tag) if target.tag else backend.container_tag(dep)


def container_image(dep: Deployment, backend: Backend) -> str:
    """NVIDIA's Triton container for the backend: ``<registry>:<tag>-<suffix>``."""
    target = dep.spec.target
    assert isinstance(target, ContainerTargetSpec)
    return f"{target.registry}:{container_tag(dep, backend)}-{target.suffix or backend.container_suffix}"


def container_command(dep: Deployment, repository: str) -> ServerCommand:
    """A server inside a container or on a cluster node: the image's ``tritonserver``, every interface."""
    server = dep.spec.server
    return ServerCommand("tritonserver", repository, ALL_INTERFACES, str(server.http_port), str(server.grpc_port),
                         str(server.metrics_port))


# --------------------------------------------------------------------------------- the OpenAI front end
def frontend_step(dep: Deployment, plan: Plan, *, triton: str, host: str, port: str, python: str = sys.executable,
                  where: str = "here", beside: str = "beside Triton") -> Step | None:
    """The step that starts the OpenAI front end in front of the Triton at ``triton`` (HOST:GRPC_PORT),
    listening on ``host:port``, with the export's tokenizer and the render's copy of ``model.chat_template_file``;
    None with ``server.openai=false``. ``python`` runs ``-m launcher.frontend`` (default: the launcher's own)."""
    if not dep.spec.server.openai:
        return None
    template = str(dep.paths.chat_template.resolve()) if dep.spec.model.chat_template_file else None
    command = frontend_command(dep.spec, triton=triton, host=host, port=port, python=python,
                               tokenizer=str(plan.export.directory.expanduser().resolve()), chat_template=template)
    return Step("launch", f"start the OpenAI front end on {openai_url(host, port)} {beside}", tuple(command),
                where=where)


def chat_template_files(dep: Deployment) -> list[LaunchFile]:
    """The render's copy of ``model.chat_template_file``, which the front end reads (digested in lock.json)."""
    source = dep.spec.model.chat_template_file
    if not source:
        return []
    return [LaunchFile(dep.paths.chat_template.name, source=Path(source).expanduser())]


# ------------------------------------------------------------------------ this machine's tritonserver
def host_command(dep: Deployment, host: str, ports: tuple[str, ...]) -> ServerCommand:
    """This machine's ``tritonserver`` (the wheel's gets the backend directory rendered beside the
    repository; a CPU-only machine gets the flags that keep the server off CUDA)."""
    from launcher.triton import find_triton

    target = dep.spec.target
    assert isinstance(target, HostTritonSpec)
    triton = find_triton(target.tritonserver)
    flags = [f"--backend-directory={dep.paths.backends.resolve()}"] if triton.root is not None else []
    if dep.spec.hardware.gpu is None:
        flags += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
    http, grpc, metrics = ports
    return ServerCommand(str(triton.binary), str(dep.paths.repository.resolve()), host, http, grpc, metrics,
                         tuple(flags))


def host_backend_files(dep: Deployment, backend: Backend) -> list[LaunchFile]:
    """What ``<output_dir>/backends/`` holds for the wheel's server: the Python backend + the backend's own."""
    from launcher.triton import backend_files, find_triton

    target = dep.spec.target
    assert isinstance(target, HostTritonSpec)
    triton = find_triton(target.tritonserver)
    if triton.root is None:
        return []
    files = {**backend_files(triton.root), **backend.backend_files(dep)}
    return [LaunchFile(f"{dep.paths.backends.name}/{relative}", source=source) for relative, source in files.items()]


def host_serving_problems(dep: Deployment, backend: Backend) -> list[Problem]:
    """Serving with this machine's Python: the modules the backend's models import must be there."""
    if dep.spec.action not in (Action.serve, Action.smoke):
        return []
    return [Problem("backend", f"{module} is not installed in this Python, and the server runs it here", fix)
            for module, fix in backend.serving_modules.items() if importlib.util.find_spec(module) is None]


def serving_environment(dep: Deployment, build: bool) -> dict[str, str]:
    from launcher.serving_env import serving_environment as environment

    target = dep.spec.target
    assert isinstance(target, HostTritonSpec)
    return environment(target, dep.cache_root, build)
