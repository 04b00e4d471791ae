"""Local target: ``tritonserver`` as a child process on this machine."""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Launch, LaunchFile, Plan, Step
from launcher.server import client_host, resolve_ports
from launcher.spec import Action, HostTritonSpec
from launcher.targets.common import (
    LAUNCH_TEMPLATE,
    chat_template_files,
    frontend_step,
    host_backend_files,
    host_command,
    host_serving_problems,
    mpirun,
    serving_environment,
)

LAUNCH_FILE = "launch.sh"


@dataclass
class LocalTargetSpec(HostTritonSpec):
    name: str = "local"


def hardware_present(dep: Deployment) -> list[Problem]:
    """Serving here must run on hardware this machine has."""
    hw = dep.spec.hardware
    if dep.spec.action not in (Action.serve, Action.smoke) or hw.gpu is None:
        return []
    from launcher.gpu import detect_gpus

    found = detect_gpus()
    if len(found) < max(hw.gpus_per_node, 1) or hw.nodes > 1:
        have = ", ".join(f"{g.name} (cc {g.compute_capability})" for g in found) or "no GPU"
        return [Problem("hardware", f"{hw.name} needs {hw.gpus_per_node} x {hw.gpu} on {hw.nodes} node(s); "
                        f"this machine has {have}", "serve with hardware=cpu here, or use a cluster target")]
    low = [g for g in found if g.compute_capability + 1e-6 < hw.compute_capability]
    if low:
        return [Problem("hardware", f"{hw.name} assumes compute capability {hw.compute_capability}; found "
                        f"{low[0].name} with {low[0].compute_capability}", "pick the hardware entry you have")]
    return []


class LocalTarget:
    name = "local"
    spec_class = LocalTargetSpec

    def problems(self, dep: Deployment, backend: Backend) -> list[Problem]:
        return hardware_present(dep) + host_serving_problems(dep, backend)

    def launch(self, dep: Deployment, plan: Plan, backend: Backend) -> Launch:
        """Serving picks the free ports (``0``) now, so the launch file and the server agree."""
        server = dep.spec.server
        if dep.spec.action in (Action.serve, Action.smoke):
            server = resolve_ports(server)
        ports = (str(server.http_port), str(server.grpc_port), str(server.metrics_port))
        ranks = backend.server_ranks(dep, plan, host_command(dep, server.host, ports))
        command = mpirun(ranks)
        env = serving_environment(dep, build=False)
        frontend = frontend_step(dep, plan, triton=f"{client_host(server.host)}:{server.grpc_port}", host=server.host,
                                 port=str(server.openai_port))
        script = LaunchFile(LAUNCH_FILE, LAUNCH_TEMPLATE, {
            "spec": dep.spec, "image": None, "command": command, "env": env,
            "frontend": frontend.command if frontend else None, "openai_log": str(dep.paths.openai_log.resolve())},
            executable=True)
        step = Step("launch", f"start tritonserver locally, log to {dep.paths.server_log}", tuple(command))
        return Launch(step, (script, *host_backend_files(dep, backend), *chat_template_files(dep)),
                      tuple(map(tuple, ranks)), server, env, frontend)

    def run(self, dep: Deployment, plan: Plan, backend: Backend, launch: Launch) -> None:
        """Start the rendered deployment (its backends/ directory came with the render) and its front end."""
        from launcher.serve import serve
        from launcher.server import FrontendProcess, TritonProcess
        from launcher.triton import find_triton, require_triton

        require_triton(find_triton(dep.spec.target.tritonserver))
        env = serving_environment(dep, build=True)
        dep = replace(dep, spec=replace(dep.spec, server=launch.server))
        frontend = FrontendProcess(list(launch.frontend.command), {}, dep.paths.openai_log) if launch.frontend \
            else None
        serve(dep, TritonProcess(list(launch.step.command), env, dep.paths.server_log), frontend, plan)


TARGET = LocalTarget()
