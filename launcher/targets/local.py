"""Local target: ``tritonserver`` as a child process on this machine."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.spec import TargetSpec


@dataclass
class LocalTargetSpec(TargetSpec):
    name: str = "local"
    tritonserver: str | None = None  # None: the binary shipped in the nvidia-pytriton wheel
    # When this Python has numpy >= 2 (which the Triton 2.51 stub cannot take), build an overlay
    # environment with numpy < 2 in the cache (DESIGN section 10); from wheel_dir on offline hosts.
    prepare_serving_env: bool = True
    wheel_dir: str | None = None


def serving_environment(dep: Deployment, build: bool = True) -> dict[str, str]:
    """The server's environment, with the Python that runs model.py (numpy < 2) first on PATH;
    ``build=False`` (render) only names an overlay environment that serving will build."""
    from launcher.serving_env import serving_python
    from launcher.triton import find_triton, require_numpy_below_2

    target = dep.spec.target
    if build and not getattr(target, "prepare_serving_env", False):
        require_numpy_below_2()
    python = serving_python(dep.cache_root, getattr(target, "wheel_dir", None), build)
    return find_triton(target.tritonserver).environment(python)


def local_backend_files(dep: Deployment, backend: Backend) -> dict[str, Path]:
    """What ``<output_dir>/backends/`` holds for the wheel's server: the Python backend + the backend's own."""
    from launcher.triton import backend_files, find_triton

    triton = find_triton(dep.spec.target.tritonserver)
    if triton.root is None:
        return {}
    files = {**backend_files(triton.root), **backend.backend_files(dep)}
    return {f"{dep.paths.backends.name}/{relative}": source for relative, source in files.items()}


def server_command(dep: Deployment, backend: Backend) -> list[str]:
    """The server's argv; the wheel's server gets the backend directory rendered beside the repository."""
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

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str | Path]:
        from launcher.render import environment

        text = environment().get_template("targets/local/launch.sh.j2").render(
            spec=dep.spec, command=shlex.join(server_command(dep, backend)),
            env=serving_environment(dep, build=False))
        return {"launch.sh": text, **local_backend_files(dep, backend)}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", f"start tritonserver locally, log to {dep.paths.server_log}",
                    tuple(server_command(dep, backend)))

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        """Start the rendered deployment (its backends/ directory came with the render)."""
        from launcher.serve import serve, smoke_prompt
        from launcher.server import TritonProcess, resolve_ports
        from launcher.triton import find_triton, require_triton

        require_triton(find_triton(dep.spec.target.tritonserver))
        env = serving_environment(dep)
        dep = replace(dep, spec=replace(dep.spec, server=resolve_ports(dep.spec.server)))
        prompt = smoke_prompt(dep, plan, backend)
        serve(dep, TritonProcess(server_command(dep, backend), env, dep.paths.server_log), prompt)


TARGET = LocalTarget()
