"""The verify stage: start the server and the OpenAI front end, wait until both are ready, smoke them, then
keep serving or stop; and action=frontend, the front end alone in front of a running Triton."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NoReturn

from launcher import report
from launcher.deployment import Deployment
from launcher.errors import Interrupted, user_error
from launcher.interfaces import chat_prompt
from launcher.plan import Plan
from launcher.query import Answer, Options, ask, ask_openai
from launcher.server import (
    ChildProcess,
    FrontendProcess,
    Stop,
    TritonProcess,
    client_host,
    exit_description,
    first_to_exit,
    frontend_command,
    openai_url,
    resolve_ports,
    sigterm_as_interrupt,
)
from launcher.spec import OPENAI_PORT, Action, ServerSpec


def smoke_prompt(dep: Deployment, plan: Plan) -> str:
    """The smoke prompt as llm-query sends it over Triton's protocol: in the tokenizer's chat template
    (``model.chat_template``, ``model.chat_template_file``), applied here for every backend, which all take the
    prompt as it comes."""
    prompt, model = dep.spec.smoke.prompt, dep.spec.model
    if not model.chat_template:
        return prompt
    template = Path(model.chat_template_file).expanduser().read_text() if model.chat_template_file else None
    return chat_prompt(plan.export.directory, prompt, template) or prompt


def api_key(server: ServerSpec) -> str | None:
    """The front end's API key, from the variable ``server.openai_api_key_env`` names."""
    return os.environ.get(server.openai_api_key_env) if server.openai_api_key_env else None


def smoke(dep: Deployment, plan: Plan) -> Answer:
    """The smoke prompt, answered greedily: through the OpenAI front end when it runs (a chat, whose template
    the front end applies; with ``model.chat_template=false`` a completion of the text as it is), else over
    gRPC (which also carries streamed answers)."""
    spec, server = dep.spec, dep.spec.server
    options = Options(max_tokens=spec.smoke.max_tokens, temperature=0.0, stream=spec.backend.streaming)
    if server.openai:
        return ask_openai(f"{client_host(server.host)}:{server.openai_port}", spec.model.served_name,
                          spec.smoke.prompt, options, chat=spec.model.chat_template, api_key=api_key(server),
                          timeout_s=server.start_timeout_s)
    return ask(f"{server.host}:{server.grpc_port}", "grpc", spec.model.served_name, smoke_prompt(dep, plan), options,
               timeout_s=server.start_timeout_s)


def openai_root(server: ServerSpec) -> str:
    """Where this machine reaches the front end: ``http://HOST:PORT`` (no ``/v1``)."""
    return openai_url(client_host(server.host), server.openai_port).removesuffix("/v1")


def exited(dep: Deployment, process: ChildProcess, code: int) -> Exception:
    """The error for a server or front end that exited by itself while serving."""
    if isinstance(process, FrontendProcess):
        return process.failure("server.openai", f"the OpenAI front end {exit_description(code)} while serving",
                               f"read {dep.paths.openai_log}")
    return user_error("tritonserver", f"{exit_description(code)} while serving",
                      f"read {dep.paths.server_log}; restart with the same command")


def serve(dep: Deployment, process: TritonProcess, frontend: FrontendProcess | None, plan: Plan) -> None:
    """Run ``process`` and ``frontend`` for ``dep`` (ports already resolved); SIGINT/SIGTERM stop both cleanly."""
    spec, server = dep.spec, dep.spec.server
    stage = "starting"
    try:
        with sigterm_as_interrupt(), process, frontend or contextlib.nullcontext():
            report.print_starting(process.pid, server, dep.paths.server_log)
            if frontend is not None:
                report.print_frontend_starting(frontend.pid, openai_url(server.host, server.openai_port),
                                               dep.paths.openai_log)
            ready_s = process.wait_ready(f"{server.host}:{server.grpc_port}", server.start_timeout_s,
                                         (frontend,) if frontend else ())
            if frontend is not None:
                ready_s = max(ready_s, frontend.wait_ready(openai_root(server), server.start_timeout_s))
            report.print_ready(ready_s)
            stage = "smoke query"
            report.print_smoke(spec.smoke.prompt, smoke(dep, plan))
            if spec.action != Action.serve:
                return
            stage = "serving"
            report.print_serving(spec.model.served_name, server)
            raise exited(dep, *first_to_exit(process, *([frontend] if frontend else [])))
    except KeyboardInterrupt as err:
        signal_name = "SIGTERM" if isinstance(err, Stop) else "SIGINT"
        report.print_stopped(signal_name, "tritonserver and the openai front end" if frontend else "tritonserver")
        raise Interrupted(signal_name, stage) from None


def triton_serves(url: str, model: str) -> None:
    """The Triton at ``url`` (gRPC) answers and serves ``model``; else one line naming the key to fix."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            live = client.is_server_live(client_timeout=5.0)
        except Exception:  # refused, bad address, not gRPC
            live = False
        if not live:
            raise user_error("server.triton_url", f"no Triton server answers gRPC at {url}",
                             "start it, or set server.triton_url=HOST:GRPC_PORT of a running one")
        names = [entry.name for entry in client.get_model_repository_index(client_timeout=5.0).models]
        if model not in names:
            raise user_error("model.served_name", f"'{model}' is not a model of the Triton at {url} "
                             f"(it has {', '.join(names) or 'none'})", "set model.served_name=<its LLM's name>")
    finally:
        client.close()


def frontend_only(dep: Deployment) -> NoReturn:
    """action=frontend: the OpenAI front end alone, in front of the Triton at ``server.triton_url``, serving
    ``model.served_name`` until SIGINT/SIGTERM."""
    spec = dep.spec
    assert spec.server.triton_url is not None
    triton_serves(spec.server.triton_url, spec.model.served_name)
    server = resolve_ports(spec.server, (OPENAI_PORT,))
    template = str(Path(spec.model.chat_template_file).expanduser().resolve()) if spec.model.chat_template_file \
        else None
    command = frontend_command(spec, triton=spec.server.triton_url, host=server.host, port=str(server.openai_port),
                               chat_template=template)
    process = FrontendProcess(command, {}, dep.paths.openai_log)
    url = openai_url(server.host, server.openai_port)
    stage = "starting"
    try:
        with sigterm_as_interrupt(), process:
            report.print_frontend_starting(process.pid, url, dep.paths.openai_log)
            report.print_ready(process.wait_ready(openai_root(server), server.start_timeout_s))
            stage = "serving"
            report.print_frontend_serving(spec.model.served_name, server)
            raise exited(dep, process, process.wait())
    except KeyboardInterrupt as err:
        signal_name = "SIGTERM" if isinstance(err, Stop) else "SIGINT"
        report.print_stopped(signal_name, "the openai front end")
        raise Interrupted(signal_name, stage) from None
