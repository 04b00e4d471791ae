"""Slurm target: an ``sbatch`` script that starts Triton on the allocated node(s), waits until it is
ready and keeps serving; ``action=serve|smoke`` submits it, follows the job and smokes the server.

Without ``target.container_image`` the job starts this machine's ``tritonserver`` exactly as the local
target does (same command, environment and backend directory; the output directory must be on a
filesystem the nodes share). With it, pyxis runs NVIDIA's container with the repository and the
export mounted read-only at their own paths. Ranks: a backend whose plan has ``ranks > 1`` gets one
``srun`` task per GPU rank; an ``mpirun`` command starts its own ranks inside the allocation.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import LauncherError, user_error
from launcher.server import PORT_KEYS, log_tail, sigterm_as_interrupt
from launcher.spec import Action, ServerSpec, TargetSpec
from launcher.targets.docker import bind_all_interfaces

JOB_FILE = "job.sbatch"
POLL_S = 0.25
# the job prints these lines (templates/targets/slurm/job.sbatch.j2); the launcher reads them back
ADDRESS_LINE = re.compile(r"^llm-launch: job=\S+ node=(\S+) http_port=(\d+) grpc_port=(\d+) metrics_port=(\d+)$",
                          re.MULTILINE)
READY_LINE = re.compile(r"^llm-launch: ready after", re.MULTILINE)
# one line of Python each, run by the job with the node's python3: free ports (0 = pick), readiness
PICK_PORTS = ('import socket,sys;s=[socket.socket() for _ in sys.argv[1:]];[x.bind(("",0)) for x in s];'
              'print(*(int(a) or x.getsockname()[1] for a,x in zip(sys.argv[1:],s)))')
PROBE = "import sys,urllib.request;urllib.request.urlopen(sys.argv[1],timeout=2)"
ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "TIMEOUT", "GONE")


@dataclass
class SlurmTargetSpec(TargetSpec):
    name: str = "slurm"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # the job's time limit (sbatch --time)
    container_image: str | None = None  # pyxis/enroot image, e.g. nvcr.io#nvidia/tritonserver:25.01-py3; None: local
    container_mounts: list[str] = field(default_factory=list)  # more pyxis mounts (SRC:DST[:ro])
    tritonserver: str | None = None  # without a container: None = the binary shipped in the nvidia-pytriton wheel
    sbatch_args: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. ["--qos=high"]
    queue_timeout_s: float = 600.0  # serve/smoke: how long the job may wait to start before it is cancelled


# ------------------------------------------------------------------------------------- the job script
def job_log(dep: Deployment) -> str:
    """The job's output file as an ``sbatch --output`` pattern (``%j`` = job id; a literal ``%`` doubled)."""
    return str(dep.paths.output_dir.resolve()).replace("%", "%%") + "/slurm-%j.out"


def directives(dep: Deployment) -> list[tuple[str, str]]:
    """``#SBATCH`` options: one task per GPU (one per node on CPU), the node's GPUs, limits, the log."""
    spec, hw, target = dep.spec, dep.spec.hardware, dep.spec.target
    options = [("--job-name", spec.name), ("--nodes", str(hw.nodes)),
               ("--ntasks-per-node", str(max(hw.gpus_per_node, 1))), ("--time", target.time),
               ("--output", job_log(dep))]
    if hw.gpu:
        options.append(("--gpus-per-node", str(hw.gpus_per_node)))
    options += [(f"--{key}", value) for key in ("partition", "account") if (value := getattr(target, key))]
    bad = next((key for key, value in options if "\n" in value or "\r" in value), None)
    if bad is not None:
        key = {"--job-name": "name", "--output": "output_dir"}.get(bad, f"target.{bad[2:]}")
        raise user_error(key, "contains a line break, which an #SBATCH line cannot carry", "remove it")
    return options


def container_mounts(dep: Deployment, plan: Plan) -> str:
    """pyxis ``--container-mounts``: repository and export read-only at their own paths, then the user's."""
    own = [dep.paths.repository.resolve(), plan.export.directory.expanduser().resolve()]
    bad = next((p for p in own if "," in str(p) or ":" in str(p)), None)
    if bad is not None:
        raise user_error("output_dir" if bad == own[0] else "cache_dir", f"'{bad}' holds ',' or ':', which "
                         "pyxis --container-mounts cannot carry", "use a path without them")
    return ",".join([*(f"{p}:{p}:ro" for p in own), *dep.spec.target.container_mounts])


def server_command(dep: Deployment, plan: Plan, backend: Backend) -> list[str]:
    """What starts the server on the node, listening on every interface: ``srun`` with one task per
    rank (and pyxis options) where needed, else the command itself, as the local target runs it."""
    from launcher.targets.local import server_command as local_command

    target, hw = dep.spec.target, dep.spec.hardware
    if target.container_image:
        command = backend.server_args(dep, "tritonserver", str(dep.paths.repository.resolve()))
        container = [f"--container-image={target.container_image}",
                     f"--container-mounts={container_mounts(dep, plan)}"]
    else:
        command, container = local_command(dep, backend), []
    srun: list[str] = []
    if container and plan.ranks == 1 and hw.nodes > 1:
        raise user_error("target.container_image", f"one container process cannot span the {hw.nodes} nodes of "
                         f"hardware={hw.name} (backend {dep.spec.backend.name} starts one server process here)",
                         "use one node, a backend that runs one rank per GPU, or no container")
    if plan.ranks > 1:
        per_node = min(plan.ranks, max(hw.gpus_per_node, 1))
        srun = ["srun", f"--ntasks={plan.ranks}", f"--ntasks-per-node={per_node}", "--mpi=pmix", *container]
    elif container:
        srun = ["srun", "--ntasks=1", *container]
    return [*srun, *bind_all_interfaces(command, dep.spec.server.host)]


def shell_words(args: list[str], server: ServerSpec) -> str:
    """``shlex.join``, except that each port flag takes its value from the job's shell variable."""
    ports = {}
    for key in PORT_KEYS:
        flag = "--" + key.replace("_", "-")
        ports[f"{flag}={getattr(server, key)}"] = f'{flag}="${{{key}}}"'
    return " ".join(ports.get(arg, shlex.quote(arg)) for arg in args)


def job_script(dep: Deployment, plan: Plan, backend: Backend) -> str:
    from launcher.render import environment
    from launcher.targets.local import serving_environment

    spec = dep.spec
    env = {} if spec.target.container_image else serving_environment(dep, build=False)
    return environment().get_template("targets/slurm/job.sbatch.j2").render(
        spec=spec, directives=directives(dep), sbatch_args=spec.target.sbatch_args, env=env,
        ports=" ".join(str(getattr(spec.server, key)) for key in PORT_KEYS), pick_ports=PICK_PORTS,
        probe=PROBE, timeout=int(spec.server.start_timeout_s),
        command=shell_words(server_command(dep, plan, backend), spec.server))


# ----------------------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class Job:
    id: str
    log: Path

    def state(self) -> tuple[str, str]:
        """``(state, reason)`` from ``scontrol``; ``GONE`` once Slurm has forgotten the job."""
        found = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True)
        fields = dict(re.findall(r"(\w+)=(\S*)", found.stdout))
        return fields.get("JobState", "GONE"), fields.get("Reason", "None")

    def cancel(self) -> None:
        subprocess.run(["scancel", self.id], capture_output=True, check=False)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ended(self) -> LauncherError:
        state, reason = self.state()
        tail = log_tail(self.log)
        return user_error("target", f"Slurm job {self.id} ended ({state}, reason {reason}) before the server was ready"
                          + (f"; last lines of {self.log}:\n{tail}" if tail else ""), f"read {self.log}")


def require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "scontrol", "scancel") if shutil.which(tool) is None]
    if missing:
        raise user_error("target", f"Slurm is not installed here ({', '.join(missing)} not on PATH)",
                         "run on a Slurm login node, or use action=render and submit job.sbatch there")


def submit(dep: Deployment) -> Job:
    script = dep.paths.output_dir.resolve() / JOB_FILE
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise user_error("target", f"sbatch refused {script}: {why}",
                         "check target.partition, target.account, target.time and target.sbatch_args")
    job_id = done.stdout.strip().split(";")[0]
    return Job(job_id, Path(job_log(dep).replace("%j", job_id).replace("%%", "%")))


def wait_running(job: Job, timeout_s: float) -> float:
    """Seconds until the job runs; cancels it and fails naming its state when it does not start in time."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        state, _ = job.state()
        if state == "RUNNING":
            return time.monotonic() - started
        if state in ENDED:
            raise job.ended()
        time.sleep(POLL_S)
    state, reason = job.state()
    job.cancel()
    raise user_error("target.queue_timeout_s", f"Slurm job {job.id} is still {state} (reason {reason}) after "
                     f"{timeout_s:g} s; it was cancelled", "raise target.queue_timeout_s, or choose a "
                     "target.partition with free nodes")


def wait_ready(job: Job, server: ServerSpec) -> ServerSpec:
    """Follow the job's output until the server reports ready; ``server`` at the node and ports it printed."""
    timeout_s = server.start_timeout_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = job.output()
        address = ADDRESS_LINE.search(output)
        if address and READY_LINE.search(output):
            http, grpc, metrics = (int(port) for port in address.group(2, 3, 4))
            return replace(server, host=address[1], http_port=http, grpc_port=grpc, metrics_port=metrics)
        if job.state()[0] != "RUNNING":
            raise job.ended()
        time.sleep(POLL_S)
    job.cancel()
    raise user_error("server.start_timeout_s", f"the server of Slurm job {job.id} was not ready after "
                     f"{timeout_s:g} s; the job was cancelled", f"raise server.start_timeout_s, or read {job.log}")


def wait_ended(job: Job, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = job.state()[0]
    while state not in ENDED and time.monotonic() < deadline:
        time.sleep(POLL_S)
        state = job.state()[0]
    return state


class SlurmTarget:
    name = "slurm"
    spec_class = SlurmTargetSpec

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str | Path]:
        from launcher.targets.local import local_backend_files

        backends = {} if dep.spec.target.container_image else local_backend_files(dep, backend)
        return {JOB_FILE: job_script(dep, plan, backend), **backends}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", f"submit the Slurm job; it logs to {job_log(dep)}",
                    ("sbatch", str(dep.paths.output_dir.resolve() / JOB_FILE)), where="cluster")

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        """Submit, wait until the job runs and its server is ready, smoke it; cancel it on any failure."""
        from launcher import report
        from launcher.serve import smoke, smoke_prompt

        spec = dep.spec
        require_slurm()
        if not spec.target.container_image:
            from launcher.targets.local import serving_environment
            from launcher.triton import find_triton, require_triton

            require_triton(find_triton(spec.target.tritonserver))
            serving_environment(dep)  # builds the numpy<2 overlay the job script names, where one is needed
        started = time.monotonic()
        job = submit(dep)
        report.say(f"submitted Slurm job {job.id}; log {job.log}")
        try:
            with sigterm_as_interrupt():
                queued = wait_running(job, spec.target.queue_timeout_s)
                report.say(f"Slurm job {job.id} running after {queued:.1f} s")
                server = wait_ready(job, spec.server)
                report.say(f"ready on {server.host} {time.monotonic() - started:.1f} s after submission")
                served = replace(dep, spec=replace(spec, server=server))
                report.print_smoke(spec.smoke.prompt, smoke(served, smoke_prompt(dep, plan, backend)))
        except BaseException:
            job.cancel()
            raise
        if spec.action == Action.smoke:
            job.cancel()
            report.say(f"Slurm job {job.id} cancelled ({wait_ended(job, 60)})")
            return
        model, node = spec.model.served_name, server.host
        report.say(f"serving '{model}' as Slurm job {job.id} on {node}: http://{node}:{server.http_port}, "
                   f"try: llm-query --url {node}:{server.grpc_port} --model {model} "
                   f"{shlex.quote(spec.smoke.prompt)}")
        report.say(f"stop it with: scancel {job.id}")


TARGET = SlurmTarget()
