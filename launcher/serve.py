"""The verify stage: start the server, wait until ready, smoke it, then keep serving or stop."""

from __future__ import annotations

from launcher import report
from launcher.deployment import Deployment
from launcher.errors import Interrupted, user_error
from launcher.interfaces import chat_prompt
from launcher.plan import Plan
from launcher.query import Answer, Options, ask
from launcher.server import Stop, TritonProcess, exit_description, sigterm_as_interrupt
from launcher.spec import Action


def smoke_prompt(dep: Deployment, plan: Plan) -> str:
    """The smoke prompt as llm-query sends it: in the tokenizer's chat template (``model.chat_template``),
    applied here for every backend, which all take the prompt as it comes."""
    prompt = dep.spec.smoke.prompt
    if not dep.spec.model.chat_template:
        return prompt
    return chat_prompt(plan.export.directory, prompt) or prompt


def smoke(dep: Deployment, prompt: str) -> Answer:
    """``prompt``, answered greedily over gRPC (which also carries streamed answers)."""
    options = Options(max_tokens=dep.spec.smoke.max_tokens, temperature=0.0, stream=dep.spec.backend.streaming)
    server = dep.spec.server
    return ask(f"{server.host}:{server.grpc_port}", "grpc", dep.spec.model.served_name, prompt, options,
               timeout_s=dep.spec.server.start_timeout_s)


def serve(dep: Deployment, process: TritonProcess, prompt: str) -> None:
    """Run ``process`` for ``dep`` (ports already resolved); SIGINT/SIGTERM stop it cleanly."""
    spec, server = dep.spec, dep.spec.server
    stage = "starting"
    try:
        with sigterm_as_interrupt(), process:
            report.print_starting(process.pid, server, dep.paths.server_log)
            ready_s = process.wait_ready(f"{server.host}:{server.grpc_port}", server.start_timeout_s)
            report.print_ready(ready_s)
            stage = "smoke query"
            report.print_smoke(spec.smoke.prompt, smoke(dep, prompt))
            if spec.action != Action.serve:
                return
            stage = "serving"
            report.print_serving(spec.model.served_name, server)
            code = process.wait()
            raise user_error("tritonserver", f"{exit_description(code)} while serving",
                             f"read {dep.paths.server_log}; restart with the same command")
    except KeyboardInterrupt as err:
        signal_name = "SIGTERM" if isinstance(err, Stop) else "SIGINT"
        report.print_stopped(signal_name)
        raise Interrupted(signal_name, stage) from None
