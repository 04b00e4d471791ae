"""Hostile values in every free-text spec key, rendered for every backend and target: every file parses as
its format and has the structure a clean render has, the values come back unchanged, and running the
rendered launch scripts (their server command replaced by a tool that prints its argv) runs no payload.

The checkpoint is a tiny HF config we write (``tests/conftest.write_hf_config``) in a directory whose
name is itself hostile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from launcher.errors import LauncherError
from launcher.render import environment
from tests.conftest import compose_spec, write_hf_config
from tests.hostile.cli import MARKER
from tests.repository import model_config, parameters

PAYLOAD = f"x'\"$(touch {MARKER}_1)`touch {MARKER}_2`;{{{{7*7}}}}\\ }} parameters {{ key: \"z\" ${{HOME}}"


def q(value: str) -> str:
    """``value`` as a quoted Hydra override value: quotes and ``${`` escaped (with the backslashes before
    them doubled), trailing backslashes doubled; every other character is literal."""
    for special in ("'", "${"):
        value = re.sub(r"(\\*)" + re.escape(special), lambda m, s=special: "\\" * (2 * len(m[1]) + 1) + s, value)
    return "'" + re.sub(r"(\\+)$", r"\1\1", value) + "'"


ARGV_DUMP = "#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
MOUNTABLE = PAYLOAD.replace(":", "_").replace(",", "_")  # pyxis mounts cannot carry ',' or ':' (refused)
# (key, value) per backend and target; "{V}" in a value is the payload (or "plain" for the clean render)
BACKENDS = {
    "pytorch": [("backend", "pytorch"), ("hardware", "cpu")],
    "vllm": [("backend", "vllm"), ("hardware", "cpu")],
    "trtllm-llmapi": [("backend", "trtllm"), ("hardware", "h100x1")],
    "trtllm-engine": [("backend", "trtllm"), ("backend.runtime", "engine"), ("hardware", "h100x1"),
                      ("+backend.engine_parameters.decoding_mode", "{V}"),
                      ("+backend.engine_parameters.gpu_device_ids", "{V}")],
}
TARGETS = {
    "local": [("target", "local")],
    "docker": [("target", "docker"), ("target.registry", "{V}"), ("target.suffix", "{V}"),
               ("target.shm_size", "{V}"), ("target.extra_args", ["{V}"])],
    "slurm": [("target", "slurm"), ("target.partition", "{V}"), ("target.account", "{V}"),
              ("target.sbatch_args", ["--comment={V}"])],
    "slurm-container": [("target", "slurm"), ("target.container_mounts", ["/data/{M}:/data"]),
                        ("target.partition", "{V}")],
    "k8s": [("target", "k8s"), ("target.registry", "{V}"), ("target.repository_pvc", "{V}"),
            ("target.openai_image", "{V}")],
}
COMMON = [("model.source", "{V}"), ("smoke.prompt", "{V}")]


def override(key: str, value: str | list[str], hostile: bool) -> str:
    """``key=value`` quoted as a user would type it, with the payload (or a plain word) filled in."""
    def fill(text: str) -> str:
        return q(text.format(V=PAYLOAD, M=MOUNTABLE) if hostile else text.format(V="plain", M="plain"))

    return f"{key}=[{','.join(fill(v) for v in value)}]" if isinstance(value, list) else f"{key}={fill(value)}"


def fake_tool(directory: Path, name: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(ARGV_DUMP)
    (directory / name).chmod(0o755)
    return directory / name


def render(root: Path, backend: str, target: str, hostile: bool) -> Path:
    """Render into ``root``; with ``hostile``, every free-text value carries the payload (and the
    directories' names too), else the same spec with plain values."""
    from launcher.pipeline import deploy

    name = (MOUNTABLE if target == "slurm-container" else PAYLOAD) if hostile else "clean"
    checkpoint = write_hf_config(root / f"weights {name}", max_position_embeddings=256)
    template = root / f"template {name}.jinja"  # copied into the render, which the front end reads
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    values = [override(key, value, hostile) for key, value in (*BACKENDS[backend], *TARGETS[target], *COMMON)]
    if target == "slurm-container":  # TensorRT-LLM's container of the runtime (the version table's rows)
        tag = "25.05" if backend == "trtllm-engine" else "26.07"
        values.append(f"target.container_image={q(f'nvcr.io#nvidia/tritonserver:{tag}-trtllm-python-py3')}")
    host_server = target in ("local", "slurm")  # this machine's tritonserver: a tool printing its argv
    overrides = ["model=tiny-llama", "model.max_input_len=128", "model.max_output_len=32",
                 f"model.checkpoint={q(str(checkpoint))}", f"output_dir={q(str(root / ('out ' + name)))}",
                 f"model.chat_template_file={q(str(template))}",
                 # pyxis mounts cannot carry ',' or ':' (refused in one line): the cache path leaves them out
                 f"cache_dir={q(str(root / ('cache ' + name.replace(',', '_').replace(':', '_'))))}",
                 *([f"target.tritonserver={fake_tool(root / 'bin', 'tritonserver')}"] if host_server else []),
                 *values, "action=render"]
    return Path(deploy(compose_spec(overrides), tuple(overrides)).output_dir)


def structure(out: Path) -> dict[str, object]:
    """What a render holds, without the values: files, and each config.pbtxt's fields and names."""
    found: dict[str, object] = {"files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                                                and p.name not in ("lock.json", "spec.yaml"))}
    for path in sorted(out.glob("model_repository/*/config.pbtxt")):
        config = model_config(path)
        found[path.parent.name] = ([field.name for field, _ in config.ListFields()],
                                   [i.name for i in config.input], [o.name for o in config.output],
                                   sorted(parameters(config)))
    return found


def run_script(script: Path, root: Path, tool: str) -> list[str]:
    """Run a rendered script with ``tool`` first on PATH; the argv it started ``tool`` with."""
    fake_tool(root / "bin", tool)
    done = subprocess.run(["bash", str(script)], cwd=root, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{root / 'bin'}:/usr/bin:/bin", "HOME": str(root), "SLURM_JOB_ID": "7"})
    line = next((line for line in done.stdout.splitlines() if line.startswith("[")), None)
    assert line is not None, done.stdout + done.stderr
    return json.loads(line)


CASES = [(backend, target) for backend in BACKENDS for target in TARGETS
         if target != "slurm-container" or backend.startswith("trtllm")]  # the image is TensorRT-LLM's


@pytest.mark.parametrize(("backend", "target"), CASES, ids=[f"{b}-{t}" for b, t in CASES])
def test_hostile_values_stay_values(tmp_path: Path, monkeypatch, backend: str, target: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")  # host Slurm jobs export this PATH
    clean = render(tmp_path / "clean", backend, target, hostile=False)
    try:
        out = render(tmp_path / "hostile", backend, target, hostile=True)
    except LauncherError as err:  # a refusal is one line per problem naming its key
        assert all("\n" not in str(p) for p in err.problems), err
        pytest.fail(f"a hostile value that is legal text was refused: {err}")
    assert structure(out) == structure(clean)
    spec = OmegaConf.load(out / "spec.yaml")  # as Hydra reads it back: escapes undone, nothing interpolated
    assert spec.model.source == PAYLOAD and spec.smoke.prompt == PAYLOAD
    for path in out.glob("model_repository/*/config.pbtxt"):
        values = parameters(model_config(path))
        assert "z" not in values  # no field or parameter came in through a value
        for key in ("decoding_mode", "gpu_device_ids"):
            if key in values and backend == "trtllm-engine":
                assert values[key] == PAYLOAD
    if target == "k8s":
        manifests = list(yaml.safe_load_all((out / "k8s.yaml").read_text()))
        volumes = manifests[0]["spec"]["template"]["spec"]["volumes"]
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == PAYLOAD
        triton, frontend = manifests[0]["spec"]["template"]["spec"]["containers"]
        assert triton["image"].startswith(PAYLOAD) and frontend["image"] == PAYLOAD
        assert f"--chat-template={out}/chat_template.jinja" in frontend["args"]
    for script, tool in (("launch.sh", "docker" if target == "docker" else "tritonserver"), ("job.sbatch", "srun")):
        if not (out / script).exists():
            continue
        subprocess.run(["bash", "-n", str(out / script)], check=True)
        argv = run_script(out / script, tmp_path / "hostile", tool)
        assert any(str(out) in word for word in argv), argv  # the output directory came through as one value
    assert (out / "chat_template.jinja").read_text() == (tmp_path / "clean" / "out clean" / "chat_template.jinja"
                                                         ).read_text()
    assert not list(tmp_path.rglob(f"{MARKER}*")), "a payload ran"


@pytest.mark.parametrize(("template", "value"), [
    ("x: {{ v }}", "text"), ("x: {{ v }}", True), ("x: {{ v | pbtxt_int }}", "0 } input ["),
    ("x: {{ v | pbtxt_enum }}", "TYPE_FP32 } output ["), ("x: {{ v | pbtxt_bool }}", "true }"),
    ("export {{ v | sh_name }}=1", "PATH; touch pwned"), ("#SBATCH {{ v | sh_flag }}=1", "--x\ntouch pwned"),
])
def test_a_value_without_its_filter_is_refused(template: str, value: object) -> None:
    """Every ``{{ }}`` of every template goes through a filter for its file's syntax, or is a number."""
    from launcher.render import TemplateValueError

    with pytest.raises(TemplateValueError):
        environment().from_string(template).render(v=value)


def test_numbers_and_escaped_values_render() -> None:
    text = environment().from_string("a: {{ n }} b: {{ s | pbtxt }} c: {{ argv | sh_join }}").render(
        n=8, s='say "hi"', argv=["echo", "a b"])
    assert text == "a: 8 b: \"say \\\"hi\\\"\" c: echo 'a b'"
