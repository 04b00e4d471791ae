"""The render stage: Triton model repository + launch files + spec.yaml + lock.json, written atomically.

Everything is rendered into a temporary directory beside ``output_dir``; every ``config.pbtxt`` is
parsed with Triton's own protobuf schema; only then does the new directory replace the old one,
so a failed render leaves the previous output untouched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import yaml

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import user_error
from launcher.plan import Launch, LaunchFile, Plan

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
MARKER = "spec.yaml"  # a directory holding it was written by llm-launch and may be replaced
LOCK = "lock.json"
PACKAGES = ("llm-launch", "hydra-core", "omegaconf", "jinja2", "tritonclient", "nvidia-pytriton")


# -------------------------------------------------------------------------- escaping, by file type
class Escaped(str):
    """Text a filter escaped for the file it goes into: the only strings a template may output."""


class TemplateValueError(ValueError):
    """A value a template cannot place: unescaped, or not of the type its field needs."""


def pbtxt_string(value: object) -> Escaped:
    """A protobuf text-format string literal, quoted and escaped."""
    from google.protobuf import text_encoding

    return Escaped('"' + text_encoding.CEscape(str(value), as_utf8=True) + '"')


def pbtxt_bool(value: object) -> Escaped:
    """``true``/``false`` from a bool, or from the strings fill_template.py writes."""
    if isinstance(value, bool) or value in ("true", "false"):
        return Escaped(str(value).lower())
    raise TemplateValueError(f"{value!r} is not a boolean (true or false)")


def pbtxt_int(value: object) -> Escaped:
    if isinstance(value, int) and not isinstance(value, bool):
        return Escaped(str(value))
    if isinstance(value, str) and INTEGER.fullmatch(value):
        return Escaped(str(int(value)))
    raise TemplateValueError(f"{value!r} is not an integer")


def pbtxt_enum(value: object) -> Escaped:
    """An enum value such as ``TYPE_FP32`` or ``KIND_GPU``."""
    if isinstance(value, str) and ENUM.fullmatch(value):
        return Escaped(value)
    raise TemplateValueError(f"{value!r} is not an enum name (like TYPE_FP32)")


def pbtxt_ints(values: object) -> Escaped:
    """The items of a repeated integer field, comma-separated."""
    return Escaped(", ".join(pbtxt_int(value) for value in values))  # type: ignore[union-attr]


def shell_word(arg: str, variables: tuple[str, ...] = ()) -> str:
    """``arg`` quoted for a POSIX shell; references ``${name}`` to the script's own ``variables`` stay
    live (double quotes, everything else escaped), all other text is literal."""
    refs = [f"${{{name}}}" for name in variables if f"${{{name}}}" in arg]
    if not refs:
        return shlex.quote(arg)
    pieces = re.split("(" + "|".join(re.escape(ref) for ref in refs) + ")", arg)
    return '"' + "".join(p if p in refs else re.sub(r'([\\"$`])', r"\\\1", p) for p in pieces) + '"'


def sh(value: object) -> Escaped:
    return Escaped(shlex.quote(str(value)))


def sh_name(value: object) -> Escaped:
    """A shell variable name (as ``export NAME=...`` takes it)."""
    if isinstance(value, str) and SHELL_NAME.fullmatch(value):
        return Escaped(value)
    raise TemplateValueError(f"{value!r} is not a shell variable name")


def sh_flag(value: object) -> Escaped:
    """A command-line option name such as ``--job-name``."""
    if isinstance(value, str) and FLAG.fullmatch(value):
        return Escaped(value)
    raise TemplateValueError(f"{value!r} is not an option name")


def sh_join(args: list[str], variables: tuple[str, ...] = ()) -> Escaped:
    """An argv as shell words (see :func:`shell_word` for ``variables``)."""
    return Escaped(" ".join(shell_word(str(arg), tuple(variables)) for arg in args))


def to_yaml(value: object) -> Escaped:
    return Escaped(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True))


INTEGER = re.compile(r"-?[0-9]+")
ENUM = re.compile(r"[A-Z][A-Z0-9_]*")
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*")
FILTERS = {"pbtxt": pbtxt_string, "pbtxt_bool": pbtxt_bool, "pbtxt_int": pbtxt_int, "pbtxt_enum": pbtxt_enum,
           "pbtxt_ints": pbtxt_ints, "sh": sh, "sh_name": sh_name, "sh_flag": sh_flag, "sh_join": sh_join,
           "to_yaml": to_yaml}


def only_escaped(value: object) -> object:
    """Jinja's ``finalize``: what a ``{{ }}`` may output is escaped text (our filters; ``tojson``'s markup)
    or a number; a bare string or bool would go in unescaped for its file's syntax."""
    from markupsafe import Markup

    if isinstance(value, (Escaped, Markup)) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise TemplateValueError(f"{value!r} would go in unescaped: give it the filter for this file's syntax")


def environment(templates: Path = TEMPLATES) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=only_escaped,
    )
    env.filters.update(FILTERS)
    return env


def render_template(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(template).render(**context)
    except TemplateValueError as err:
        raise user_error(template, f"cannot render: {err}", "a value of the wrong type or a template bug") from None


def parse_model_config(text: str, where: str) -> None:
    """Parse ``config.pbtxt`` text with Triton's ``ModelConfig`` schema; raise naming the file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise user_error(where, f"not a valid Triton model config: {err}", "this is a template bug") from err


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Writer:
    """Writes the files of one render under ``root`` and remembers the digest of each, and of each
    template it used, for ``lock.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.envs: dict[Path, jinja2.Environment] = {}
        self.files: dict[str, str] = {}
        self.templates: dict[str, str] = {}

    def template(self, relative: str, template: str, context: dict[str, Any], templates: Path = TEMPLATES) -> None:
        self.templates[template] = sha256(templates / template)
        env = self.envs.setdefault(templates, environment(templates))
        text = render_template(env, template, context)
        if Path(relative).name == "config.pbtxt":
            parse_model_config(text, relative.removeprefix("model_repository/"))
        self.text(relative, text)

    def text(self, relative: str, text: str) -> None:
        target = self.target(relative)
        target.write_text(text)
        self.files[relative] = sha256(target)

    def copy(self, relative: str, source: Path) -> None:
        target = self.target(relative)
        shutil.copy2(source, target)  # e.g. the Python-backend library and stub
        self.files[relative] = sha256(target)

    def target(self, relative: str) -> Path:
        """``root/relative``, refused (a bug, or a hostile name) if it would land outside ``root``."""
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise user_error("output_dir", f"'{relative}' would be written outside the deployment directory",
                             "use plain names (letters, digits, '_', '.', '-') for names and files")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def launch_file(self, file: LaunchFile) -> None:
        if file.template is not None:
            self.template(file.path, file.template, file.context)
        elif file.source is not None:
            self.copy(file.path, file.source)
        else:
            self.text(file.path, file.text or "")
        if file.executable:
            self.target(file.path).chmod(0o755)


def render_repository(dep: Deployment, plan: Plan, writer: Writer) -> None:
    """Every model of the plan under ``model_repository/``: ``.j2`` files rendered, the rest copied."""
    repository = dep.paths.repository.name
    for model in plan.models:
        templates = model.templates or TEMPLATES
        source = templates / model.template
        context = {"spec": dep.spec, "name": model.name, **model.context}
        for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            relative = f"{repository}/{model.name}/{path.relative_to(source).as_posix()}"
            template = path.relative_to(templates).as_posix()
            if path.suffix == ".j2":
                writer.template(relative.removesuffix(".j2"), template, context, templates)
            else:
                writer.templates[template] = sha256(path)
                writer.copy(relative, path)


def versions(backend: Backend) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in (*PACKAGES, *backend.engine_packages):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def lock(dep: Deployment, plan: Plan, backend: Backend, writer: Writer) -> dict[str, Any]:
    """What is needed to reproduce the render: checkpoint identity, versions, the backend's own record
    (``plan.lock``, e.g. the container row used), and the digest of every template used and every file
    written (lock.json itself aside)."""
    ckpt = dep.checkpoint
    return {
        "checkpoint": {
            "path": dep.checkpoint_path,
            "format": dep.checkpoint_format,
            "fingerprint": ckpt.fingerprint() if ckpt else None,
        },
        "versions": versions(backend),
        **plan.lock,
        "templates": dict(sorted(writer.templates.items())),
        "files": dict(sorted(writer.files.items())),
    }


def check_output_dir(output_dir: Path) -> None:
    """``output_dir`` is new, empty, or an earlier render (which the new one replaces)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise user_error("output_dir", f"'{output_dir}' is a file", "choose a directory path for output_dir")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER).is_file():
        raise user_error("output_dir", f"'{output_dir}' exists and was not written by llm-launch",
                         "choose an empty or new output_dir")


def render(dep: Deployment, plan: Plan, launch: Launch, backend: Backend, spec_yaml: str) -> Path:
    """Render into a temp dir, validate, then move it into ``output_dir`` in one rename."""
    output_dir = dep.paths.output_dir.resolve()
    check_output_dir(output_dir)
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    except OSError as err:
        raise user_error("output_dir", f"cannot write under '{output_dir.parent}': {err.strerror}",
                         "choose an output_dir you can write to") from None
    try:
        writer = Writer(tmp)
        render_repository(dep, plan, writer)
        for file in launch.files:
            writer.launch_file(file)
        writer.text(MARKER, spec_yaml)
        (tmp / LOCK).write_text(json.dumps(lock(dep, plan, backend, writer), indent=2) + "\n")
        _replace_dir(tmp, output_dir)
    except OSError as err:  # disk full, a read-only or vanished directory
        shutil.rmtree(tmp, ignore_errors=True)
        raise user_error("output_dir", f"cannot write the deployment to '{output_dir}': {err.strerror}",
                         "free space or choose another output_dir; nothing was written") from None
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
