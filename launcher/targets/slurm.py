"""Slurm target: an ``sbatch`` script that starts Triton on the allocated node(s), waits until it is
ready and keeps serving; ``action=serve|smoke`` submits it, follows the job and smokes the server.

Without ``target.container_image`` the job starts this machine's ``tritonserver`` exactly as the local
target does (same command, environment and backend directory; the output directory must be on a
filesystem the nodes share). With it, pyxis runs that container with the repository and the export
mounted read-only at their own paths. Several ranks (the backend's per-rank argv) are one ``srun`` task
per GPU rank, each running its own line of ``ranks.sh`` (selected by ``SLURM_PROCID``). The OpenAI front end
(``server.openai``) runs on the job's first node beside the rank-0 server, from the launcher's Python (on the
shared filesystem too), and its log goes to ``output_dir/openai.log``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import LauncherError, Problem, user_error
from launcher.plan import Launch, LaunchFile, Plan, ServerCommand, Step
from launcher.server import log_tail, sigterm_as_interrupt
from launcher.spec import PORT_KEYS, Action, HostTritonSpec, ServerSpec
from launcher.targets.common import (
    ALL_INTERFACES,
    chat_template_files,
    frontend_step,
    host_backend_files,
    host_command,
    host_serving_problems,
    serving_environment,
)

JOB_FILE = "job.sbatch"
RANKS_FILE = "ranks.sh"
POLL_S = 0.25
# the job prints these lines (templates/targets/slurm/job.sbatch.j2); the launcher reads them back
ADDRESS_LINE = re.compile(r"^llm-launch: job=\S+ node=(\S+) http_port=(\d+) grpc_port=(\d+) metrics_port=(\d+)"
                          r"(?: openai_port=(\d+))?$", re.MULTILINE)
READY_LINE = re.compile(r"^llm-launch: ready after", re.MULTILINE)
# one line of Python each, run by the job with the node's python3: free ports (0 = pick), readiness
PICK_PORTS = ('import socket,sys;s=[socket.socket() for _ in sys.argv[1:]];[x.bind(("",0)) for x in s];'
              'print(*(int(a) or x.getsockname()[1] for a,x in zip(sys.argv[1:],s)))')
PROBE = "import sys,urllib.request;urllib.request.urlopen(sys.argv[1],timeout=2)"
ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "TIMEOUT", "GONE")
PORT_VARIABLES = (*PORT_KEYS, "openai_port")  # the job script's shell variables holding the ports it picked


@dataclass
class SlurmTargetSpec(HostTritonSpec):
    name: str = "slurm"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # the job's time limit (sbatch --time)
    container_image: str | None = None  # pyxis/enroot image, e.g. nvcr.io#nvidia/tritonserver:25.01-py3; None: local
    container_mounts: list[str] = field(default_factory=list)  # more pyxis mounts (SRC:DST[:ro])
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
    return options


def problems(dep: Deployment, backend: Backend) -> list[Problem]:
    spec = dep.spec
    found = []
    bad = next((key for key, value in directives(dep) if "\n" in value or "\r" in value), None)
    if bad is not None:
        key = {"--job-name": "name", "--output": "output_dir"}.get(bad, f"target.{bad[2:]}")
        found.append(Problem(key, "contains a line break, which an #SBATCH line cannot carry", "remove it"))
    if spec.target.container_image:
        own = {"output_dir": dep.paths.output_dir.resolve(), "cache_dir": dep.cache_root.expanduser().resolve()}
        found += [Problem(key, f"'{path}' holds ',' or ':', which pyxis --container-mounts cannot carry",
                          "use a path without them") for key, path in own.items() if {",", ":"} & set(str(path))]
    else:
        found += host_serving_problems(dep, backend)
    return found


def container_mounts(dep: Deployment, plan: Plan, ranks_file: Path | None) -> str:
    """pyxis ``--container-mounts``: repository, export (and the ranks script) read-only at their own
    paths, then the user's."""
    own = [dep.paths.repository.resolve(), plan.export.directory.expanduser().resolve()]
    own += [ranks_file] if ranks_file else []
    return ",".join([*(f"{p}:{p}:ro" for p in own), *dep.spec.target.container_mounts])


def server_command(dep: Deployment) -> ServerCommand:
    """Where each rank's server listens: every interface of its node, on the ports the job picked."""
    ports = tuple(f"${{{key}}}" for key in PORT_KEYS)
    if dep.spec.target.container_image:
        return ServerCommand("tritonserver", str(dep.paths.repository.resolve()), ALL_INTERFACES, *ports)
    return host_command(dep, ALL_INTERFACES, ports)


def job_command(dep: Deployment, plan: Plan, ranks: list[list[str]]) -> list[str]:
    """What the job runs: the one server (through ``srun`` for a container), or one ``srun`` task per rank
    (PMIx, as TensorRT-LLM's MPI expects), each running its line of ``ranks.sh``."""
    target, hw = dep.spec.target, dep.spec.hardware
    ranks_file = dep.paths.output_dir.resolve() / RANKS_FILE if len(ranks) > 1 else None
    if target.container_image and ranks_file is None and hw.nodes > 1:
        raise user_error("target.container_image", f"one container process cannot span the {hw.nodes} nodes of "
                         f"hardware={hw.name} (backend {dep.spec.backend.name} starts one server process here)",
                         "use one node, a backend that runs one rank per GPU, or no container")
    container = ([f"--container-image={target.container_image}",
                  f"--container-mounts={container_mounts(dep, plan, ranks_file)}"] if target.container_image else [])
    if ranks_file is None:
        return ["srun", "--ntasks=1", *container, *ranks[0]] if container else ranks[0]
    per_node = min(len(ranks), max(hw.gpus_per_node, 1))
    return ["srun", f"--ntasks={len(ranks)}", f"--ntasks-per-node={per_node}", "--mpi=pmix", *container,
            "bash", str(ranks_file)]


def frontend(dep: Deployment, plan: Plan) -> Step | None:
    """The front end on the job's first node, in front of the rank-0 server there, on every interface."""
    return frontend_step(dep, plan, triton="127.0.0.1:${grpc_port}", host=ALL_INTERFACES, port="${openai_port}",
                         where="cluster")


def launch_files(dep: Deployment, plan: Plan, backend: Backend, ranks: list[list[str]],
                 front: Step | None) -> tuple[LaunchFile, ...]:
    spec = dep.spec
    env = {} if spec.target.container_image else serving_environment(dep, build=False)
    job = LaunchFile(JOB_FILE, "targets/slurm/job.sbatch.j2", {
        "spec": spec, "directives": directives(dep), "sbatch_args": spec.target.sbatch_args, "env": env,
        "ports": [getattr(spec.server, key) for key in spec.server.port_keys()], "pick_ports": PICK_PORTS,
        "probe": PROBE, "timeout": int(spec.server.start_timeout_s),
        "command": job_command(dep, plan, ranks), "variables": PORT_VARIABLES,
        "frontend": front.command if front else None, "openai_log": str(dep.paths.openai_log.resolve())},
        executable=True)
    files = [job, *chat_template_files(dep)]
    if len(ranks) > 1:
        files.append(LaunchFile(RANKS_FILE, "targets/slurm/ranks.sh.j2", {
            "spec": spec, "ranks": ranks, "variables": PORT_VARIABLES}, executable=True))
    return (*files, *([] if spec.target.container_image else host_backend_files(dep, backend)))


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
            openai = int(address[5]) if address[5] else server.openai_port
            return replace(server, host=address[1], http_port=http, grpc_port=grpc, metrics_port=metrics,
                           openai_port=openai)
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

    def problems(self, dep: Deployment, backend: Backend) -> list[Problem]:
        return problems(dep, backend)

    def launch(self, dep: Deployment, plan: Plan, backend: Backend) -> Launch:
        ranks = backend.server_ranks(dep, plan, server_command(dep))
        step = Step("launch", f"submit the Slurm job; it logs to {job_log(dep)}",
                    ("sbatch", str(dep.paths.output_dir.resolve() / JOB_FILE)), where="cluster")
        front = frontend(dep, plan)
        return Launch(step, launch_files(dep, plan, backend, ranks, front), tuple(map(tuple, ranks)),
                      dep.spec.server, frontend=front)

    def run(self, dep: Deployment, plan: Plan, backend: Backend, launch: Launch) -> None:
        """Submit, wait until the job runs and its server is ready, smoke it; cancel it on any failure."""
        from launcher import report
        from launcher.serve import smoke

        spec = dep.spec
        require_slurm()
        if not spec.target.container_image:
            from launcher.triton import find_triton, require_triton

            require_triton(find_triton(spec.target.tritonserver))
            serving_environment(dep, build=True)  # builds the numpy<2 overlay the job script names, if needed
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
                report.print_smoke(spec.smoke.prompt, smoke(served, plan))
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
        if server.openai:
            report.print_openai(model, node, server)
        report.say(f"stop it with: scancel {job.id}")


TARGET = SlurmTarget()
