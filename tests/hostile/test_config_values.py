"""Hostile and careless spec values through the real CLI: each is refused in one line naming its key, with
exit status 2, no traceback and nothing written (see ``tests/hostile/cli.py`` for what every case checks).

The checkpoint of every case is a valid tiny HF config (ours, ``tests/conftest.write_hf_config``): the
values, not the weights, are what is hostile here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_hf_config
from tests.hostile.cli import MARKER, Case, assert_refused

PAYLOAD = f"$(touch {MARKER}_cmd)`touch {MARKER}_tick`"  # runs only if a shell evaluates the value
BREAK = f"x\ntouch {MARKER}_line"  # a line break that would end a comment or an #SBATCH line


def checkpoint(case_dir: Path) -> Path:
    return write_hf_config(case_dir / "tiny", max_position_embeddings=256)


def a_file(case_dir: Path) -> Path:
    (case_dir / "afile").write_text("not a directory")
    return checkpoint(case_dir)


def foreign_dir(case_dir: Path) -> Path:
    (case_dir / "[red]theirs").mkdir()
    (case_dir / "[red]theirs" / "notes.txt").write_text("someone else's")
    return checkpoint(case_dir)


def case(id: str, *overrides: str, expect: tuple[str, ...], action: str = "render", build=checkpoint) -> Case:
    return Case(id, build, expect, action, overrides)


CASES = [
    # line breaks in every kind of value that reaches a launch file
    case("name-line-break", f"name='{BREAK}'", expect=("name: contains a line break",)),
    case("model-name-line-break", "name=x", f"model.name='{BREAK}'", expect=("model.name: contains a line break",)),
    case("docker-tag-line-break", "target=docker", f"target.tag='{BREAK}'",
         expect=("target.tag: contains a line break",)),
    case("docker-registry-cr", "target=docker", "target.registry='nvcr.io\rtouch pwned_cr'",
         expect=("target.registry: contains a line break",)),
    case("docker-suffix-line-break", "target=docker", f"target.suffix='{BREAK}'",
         expect=("target.suffix: contains a line break",)),
    case("docker-extra-args-line-break", "target=docker", f"target.extra_args=['{BREAK}']",
         expect=("target.extra_args[0]: contains a line break",)),
    case("sbatch-args-line-break", "target=slurm", f"target.sbatch_args=['--qos=high', '{BREAK}']",
         expect=("target.sbatch_args[1]: contains a line break",)),
    case("slurm-partition-line-break", "target=slurm", f"target.partition='{BREAK}'",
         expect=("target.partition: contains a line break",)),
    case("slurm-account-cr", "target=slurm", "target.account='team\rtouch pwned_cr'",
         expect=("target.account: contains a line break",)),
    case("slurm-image-line-break", "target=slurm", f"target.container_image='{BREAK}'",
         expect=("target.container_image: contains a line break",)),
    case("output-dir-line-break", f"output_dir='out\n{MARKER}'", expect=("output_dir: contains a line break",)),
    # names are path components
    case("served-name-escapes", "model.served_name=../../../escaped",
         expect=("model.served_name: '../../../escaped'",)),
    case("served-name-absolute", "model.served_name=/tmp/abs", expect=("model.served_name: '/tmp/abs'",)),
    case("model-name-escapes-the-cache", "name=x", "model.name=../../x", expect=("model.name: '../../x'",)),
    case("name-dot-dot", "name=..", expect=("name: '..'",)),
    case("name-with-a-slash", "name=a/b", expect=("name: 'a/b'",)),
    case("name-with-a-payload", f"name='{PAYLOAD}'", expect=("name: ",)),
    case("server-host-payload", f"server.host='{PAYLOAD}'", expect=("server.host: ",)),
    # sizes, ports and limits
    case("tensor-parallel-0", "backend.tensor_parallel=0", expect=("backend.tensor_parallel: must be >= 1",)),
    case("pipeline-parallel-0", "backend.pipeline_parallel=0", expect=("backend.pipeline_parallel: must be >= 1",)),
    case("instance-count-0", "backend.instance_count=0", expect=("backend.instance_count: must be >= 1",)),
    case("max-batch-size-negative", "backend.max_batch_size=-4", expect=("backend.max_batch_size: must be >= 1",)),
    case("max-input-len-0", "model.max_input_len=0", expect=("model.max_input_len: must be >= 1",)),
    case("queue-delay-negative", "backend.max_queue_delay_us=-1",
         expect=("backend.max_queue_delay_us: must be >= 0",)),
    case("kv-fraction-nan", "backend.kv_cache_memory_fraction=nan", expect=("backend.kv_cache_memory_fraction",)),
    case("http-port-70000-at-smoke", "server.http_port=70000", action="smoke",
         expect=("server.http_port: 70000 is not a TCP port",)),
    case("grpc-port-negative", "server.grpc_port=-1", expect=("server.grpc_port: -1 is not a TCP port",)),
    case("ports-clash", "server.grpc_port=8000", expect=("server.grpc_port: 8000 is also server.http_port",)),
    case("smoke-max-tokens-0-starts-nothing", "smoke.max_tokens=0", action="smoke",
         expect=("smoke.max_tokens: must be >= 1",)),
    case("start-timeout-0", "server.start_timeout_s=0", action="smoke",
         expect=("server.start_timeout_s: must be > 0",)),
    case("unknown-backend-name", "backend.name=nope", expect=("backend.name: unknown backend 'nope'",)),
    # the OpenAI front end's keys
    case("openai-port-clash", "server.openai_port=8001", expect=("server.openai_port: 8001 is also server.grpc_port",)),
    case("openai-port-70000", "server.openai_port=70000", expect=("server.openai_port: 70000 is not a TCP port",)),
    case("openai-key-env-holds-a-key", "server.openai_api_key_env='sk-live 123'",
         expect=("server.openai_api_key_env: 'sk-live 123' is not an environment variable name", "never the key")),
    case("openai-key-env-unset-at-smoke", "server.openai_api_key_env=LLM_LAUNCH_UNSET_KEY", action="smoke",
         expect=("server.openai_api_key_env: the variable LLM_LAUNCH_UNSET_KEY is not set",)),
    case("openai-alias-payload", f"server.openai_aliases=[ok,'{PAYLOAD}']",
         expect=("server.openai_aliases[1]: '", "is not a model id")),
    case("openai-alias-line-break", f"server.openai_aliases=['{BREAK}']",
         expect=("server.openai_aliases[0]: contains a line break",)),
    case("openai-alias-twice", "server.openai_aliases=[llm]", expect=("server.openai_aliases[0]: 'llm' is already",)),
    case("openai-cors-origin-with-a-path", "server.openai_cors_origins=['https://app.example.com/x']",
         expect=("server.openai_cors_origins[0]: 'https://app.example.com/x' is not a browser origin",)),
    case("openai-body-limit-0", "server.openai_max_body_bytes=0",
         expect=("server.openai_max_body_bytes: must be >= 1",)),
    case("openai-timeout-negative", "server.openai_request_timeout_s=-1",
         expect=("server.openai_request_timeout_s: must be > 0",)),
    case("chat-template-file-missing", "model.chat_template_file='input/[red]nope.jinja'",
         expect=("model.chat_template_file: cannot read 'input/[red]nope.jinja'",)),
    case("frontend-without-triton-url", action="frontend", expect=("server.triton_url: is not set",)),
    case("frontend-triton-url-payload", f"server.triton_url='{PAYLOAD}:8001'", action="frontend",
         expect=("server.triton_url: '", "is not HOST:GRPC_PORT")),
    # paths: rich markup printed as it is, unusable output directories
    case("markup-in-a-missing-checkpoint", "model.checkpoint='input/[/bold]weights[red]'", action="export",
         expect=("model.checkpoint: 'input/[/bold]weights[red]' does not exist",)),
    case("output-dir-under-a-file", "output_dir=input/afile/out", build=a_file,
         expect=("output_dir: cannot write under", "afile")),
    case("output-dir-unwritable", "output_dir=/proc/llm-launch/out", expect=("output_dir: cannot write under",)),
    case("output-dir-not-ours", "output_dir='input/[red]theirs'", build=foreign_dir,
         expect=("output_dir: '", "[red]theirs' exists and was not written by llm-launch")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Case, cli_outcomes) -> None:
    assert_refused(cli_outcomes[case.id].result())
