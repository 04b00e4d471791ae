"""Rendering: every backend's repository parses with Triton's schema; escaping; atomicity; replay."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from launcher.errors import LauncherError
from tests.conftest import REPO, run_cli
from tests.repository import docker_argv, model_config, parameters


def test_pytorch_repository(run_deploy, tmp_path: Path) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=pytorch", "hardware=h100x2", "precision=bf16",
                         "backend.max_batch_size=16", "action=render")
    out = Path(outcome.output_dir)
    config = model_config(out / "model_repository/llm/config.pbtxt")
    assert config.name == "llm" and config.backend == "python"
    assert config.max_batch_size == 0  # the vLLM-backend contract; model.py batches up to 16 itself
    assert parameters(config)["max_batch_size"] == "16"
    assert [(g.kind, list(g.gpus)) for g in config.instance_group] == [(config.instance_group[0].KIND_GPU, [0, 1])]
    assert parameters(config)["model_dir"] == "/models/Meta-Llama-3-8B-Instruct"
    assert parameters(config)["dtype"] == "bfloat16"
    assert {i.name for i in config.input} >= {"text_input", "sampling_parameters", "max_tokens", "stream"}
    assert (out / "model_repository/llm/1/model.py").is_file()
    assert {p.name for p in out.iterdir()} >= {"model_repository", "launch.sh", "spec.yaml", "lock.json"}


def test_vllm_repository(run_deploy) -> None:
    outcome = run_deploy("model=mistral-7b", "backend=vllm", "hardware=h100x2", "backend.tensor_parallel=2",
                         "backend.streaming=true", "precision=fp8", "action=render")
    out = Path(outcome.output_dir) / "model_repository/llm"
    config = model_config(out / "config.pbtxt")
    assert config.backend == "vllm"
    assert config.model_transaction_policy.decoupled is True
    engine = json.loads((out / "1/model.json").read_text())
    assert engine["model"] == "/models/Mistral-7B-Instruct-v0.3"
    assert engine["tensor_parallel_size"] == 2
    assert engine["quantization"] == "fp8"
    assert engine["max_model_len"] == 4096 + 1024


@pytest.mark.parametrize("runtime", ["llmapi", "engine"])
def test_trtllm_repository_parses(run_deploy, runtime: str) -> None:
    outcome = run_deploy("model=llama3-8b", "backend=trtllm", f"backend.runtime={runtime}", "hardware=h100x1",
                         "precision=bf16", "action=render")
    repository = Path(outcome.output_dir) / "model_repository"
    configs = sorted(repository.glob("*/config.pbtxt"))
    assert configs
    for path in configs:
        assert model_config(path).name == path.parent.name
    for path in repository.rglob("*"):
        if path.is_file() and path.suffix in (".pbtxt", ".yaml", ".json"):
            assert "${" not in path.read_text(), path


def test_plan_writes_nothing(tmp_path: Path) -> None:
    result = run_cli("model=llama3-8b", "backend=vllm", "hardware=h100x1", "action=plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Plan for llama3-8b-vllm-auto" in result.stdout
    assert "llm-launch model=llama3-8b backend=vllm hardware=h100x1 action=render" in result.stdout
    assert list(tmp_path.iterdir()) == []


HOSTILE = 'evil"name\' $(touch /tmp/pwned) {{ 7*7 }} `id`;'


def quoted(value: str) -> str:
    """A Hydra override value quoted as a user would on the command line."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_hostile_values_are_escaped_everywhere(run_deploy, tmp_path: Path) -> None:
    checkpoint = str(tmp_path / 'weights "quoted" $(rm -rf ~) {{x}}')
    outcome = run_deploy("model=llama3-8b", f"model.checkpoint={quoted(checkpoint)}", f"model.source={quoted(HOSTILE)}",
                         "hardware=h100x1", "target=docker", "action=render")
    out = Path(outcome.output_dir)
    config = model_config(out / "model_repository/llm/config.pbtxt")
    assert parameters(config)["model_dir"] == checkpoint  # round-trips exactly through pbtxt escaping
    launch = (out / "launch.sh").read_text()
    assert "49" not in launch  # Jinja syntax in values is never evaluated
    assert f"{checkpoint}:{checkpoint}:ro" in docker_argv(out)  # one argument, unchanged
    subprocess.run(["bash", "-n", str(out / "launch.sh")], check=True)
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert spec["model"]["source"] == HOSTILE and spec["model"]["checkpoint"] == checkpoint


@pytest.mark.parametrize("value", [HOSTILE, 'line\nbreak\t"tab" \\ back', "\x00\x7f ünï ${x}"])
def test_pbtxt_filter_round_trips_any_string(value: str) -> None:
    from launcher.render import pbtxt_string

    text = f'name: "m" parameters [ {{ key: "k" value: {{ string_value: {pbtxt_string(value)} }} }} ]'
    assert parameters(text_format.Parse(text, model_config_pb2.ModelConfig()))["k"] == value


def test_failed_render_leaves_previous_output_untouched(run_deploy, monkeypatch) -> None:
    first = Path(run_deploy("model=llama3-8b", "hardware=h100x1", "backend=vllm", "action=render").output_dir)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    import launcher.render as render

    def broken(text: str, where: str) -> None:
        raise LauncherError()

    monkeypatch.setattr(render, "parse_model_config", broken)
    with pytest.raises(LauncherError):
        run_deploy("model=llama3-8b", "hardware=h100x1", "backend=pytorch", "action=render")
    after = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_render_refuses_to_replace_a_foreign_directory(run_deploy, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(LauncherError, match=r"output_dir: .* was not written by llm-launch"):
        run_deploy("model=llama3-8b", "hardware=h100x1", "action=render")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_rerender_from_saved_spec_is_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "dep"
    first = run_cli("model=llama3-70b", "backend=trtllm", "hardware=h100x8", "backend.tensor_parallel=8",
                    f"output_dir={out}", "action=render", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    replay = run_cli(f"--config-dir={out}", "--config-name=spec", "action=render", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_lock_records_versions_and_template_digests(run_deploy) -> None:
    out = Path(run_deploy("model=llama3-8b", "hardware=h100x1", "action=render").output_dir)
    lock = json.loads((out / "lock.json").read_text())
    assert lock["versions"]["hydra-core"] and lock["versions"]["jinja2"]
    assert "pytorch/model/config.pbtxt.j2" in lock["templates"]
    assert all(len(digest) == 64 for digest in lock["templates"].values())


def test_every_checked_in_spec_renders(run_deploy) -> None:
    specs = sorted((REPO / "conf" / "deploy").rglob("*.yaml"))
    assert len(specs) >= 5
    for spec in specs:
        name = spec.relative_to(REPO / "conf" / "deploy").with_suffix("").as_posix()
        outcome = run_deploy(f"+deploy={name}", "action=render")
        assert Path(outcome.output_dir, "spec.yaml").is_file(), name


@pytest.mark.parametrize("value", [HOSTILE, "two\nlines", "tab\tand 'single' quotes", "$HOME ${x} `id` {{ y }}"])
def test_shell_filter_round_trips_through_bash(value: str) -> None:
    from launcher.render import environment

    script = environment().from_string("printf %s {{ value | sh }}").render(value=value)
    assert subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout == value


@pytest.mark.parametrize("value", [HOSTILE, "two\nlines", "key: value # not a comment", "- [list]"])
def test_yaml_filter_round_trips(value: str) -> None:
    from launcher.render import to_yaml

    assert yaml.safe_load(to_yaml({"model": value})) == {"model": value}
