"""The inspect stage: a spec plus what is known about its checkpoint, and every path derived from it."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher.checkpoints import Checkpoint, hub, inspect, resolve_checkpoint_path
from launcher.errors import LauncherError, Problem
from launcher.spec import Action, DeploySpec, ModelArch, ModelSpec

NEEDS_WEIGHTS = (Action.export, Action.serve, Action.smoke, Action.bench)


@dataclass(frozen=True)
class DeployPaths:
    """Every output path of one deployment; deriving them creates nothing."""

    output_dir: Path

    @property
    def repository(self) -> Path:
        return self.output_dir / "model_repository"

    @property
    def spec_file(self) -> Path:
        return self.output_dir / "spec.yaml"

    @property
    def lock_file(self) -> Path:
        return self.output_dir / "lock.json"

    @property
    def backends(self) -> Path:
        """Triton backend directory assembled for the local target."""
        return self.output_dir / "backends"

    @property
    def server_log(self) -> Path:
        return self.output_dir / "server.log"

    @property
    def openai_log(self) -> Path:
        """The OpenAI front end's log."""
        return self.output_dir / "openai.log"

    @property
    def chat_template(self) -> Path:
        """The copy of ``model.chat_template_file`` the front end reads."""
        return self.output_dir / "chat_template.jinja"


@dataclass
class Deployment:
    spec: DeploySpec
    arch: ModelArch | None  # from the checkpoint when it is here, else from the model config
    checkpoint: Checkpoint | None  # None when the weights are not on this machine
    checkpoint_path: str | None  # model.checkpoint with pkg: references resolved
    paths: DeployPaths
    overrides: tuple[str, ...] = ()  # command-line overrides that composed the spec
    load_problems: list[Problem] = field(default_factory=list)  # found while inspecting
    # a hub checkpoint (hf://...) as resolved: {"repo": ..., "revision": ..., "commit": ...}; lock.json records it
    hub: dict[str, Any] | None = None

    @property
    def lock(self) -> dict[str, Any]:
        """What lock.json records of the checkpoint's resolution (beside its fingerprint)."""
        return {"hub": self.hub} if self.hub else {}

    @property
    def checkpoint_format(self) -> str:
        return self.checkpoint.format if self.checkpoint else self.spec.model.format.value

    @property
    def cache_root(self) -> Path:
        return Path(self.spec.cache_dir).expanduser()

    def cache_key(self, kind: str, **settings: object) -> str:
        """Content-addressed key: the checkpoint's fingerprint + converter version + settings."""
        from launcher.cache import CONVERTER_VERSION

        if self.hub:  # the same key on every host: the commit, not the local cache's files
            source = f"hub:{self.hub['repo']}@{self.hub['commit']}"
        else:
            source = self.checkpoint.fingerprint() if self.checkpoint else f"remote:{self.checkpoint_path}"
        payload = json.dumps(
            {"source": source, "kind": kind, "converter": CONVERTER_VERSION, **settings},
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return f"{kind}-{self.spec.model.name}-{digest}"

    def launcher_command(self, action: str) -> tuple[str, ...]:
        """The exact ``llm-launch`` command that runs ``action`` for this spec."""
        kept = [o for o in self.overrides if not o.startswith("action=")]
        return ("llm-launch", *kept, f"action={action}")

    def shell_command(self, action: str) -> str:
        return shlex.join(self.launcher_command(action))


MAX_DEFAULT_OUTPUT = 4096


def default_lengths(model: ModelSpec, arch: ModelArch | None) -> ModelSpec:
    """``max_input_len``/``max_output_len`` left unset (model=auto) fitted to the checkpoint's positions: the
    output a quarter of them (at most 4096 tokens), the input the rest."""
    if arch is None or (model.max_input_len is not None and model.max_output_len is not None):
        return model
    positions = arch.max_position_embeddings
    output = model.max_output_len or max(min(positions // 4, MAX_DEFAULT_OUTPUT,
                                             positions - (model.max_input_len or 0)), 1)
    return replace(model, max_input_len=model.max_input_len or max(positions - output, 1), max_output_len=output)


def _from_hub(ref: hub.HubCheckpoint, action: Action) -> tuple[str, ModelArch | None, dict[str, Any]]:
    """A hub checkpoint's local snapshot (downloaded here when this action needs the weights), or else its
    ``hf://`` address and the architecture of its ``config.json``."""
    found = hub.cached(ref) or (hub.download(ref) if action in NEEDS_WEIGHTS else None)
    resolved = {"repo": ref.repo_id, "revision": ref.revision or "main"}
    if found is not None:
        return str(found.path), None, {**resolved, "commit": found.commit}
    from launcher.checkpoints.base import Fields
    from launcher.checkpoints.hf import arch_from_config, read_json

    config = hub.config(ref)  # snapshots/<commit>/config.json
    return ref.uri, arch_from_config(Fields(read_json(config), f"{ref.uri}/config.json")), {
        **resolved, "commit": config.parent.name}


def resolve(spec: DeploySpec, overrides: tuple[str, ...] = ()) -> Deployment:
    """Find the checkpoint (on this machine, or in the Hugging Face cache) and read its architecture."""
    problems: list[Problem] = []
    checkpoint = None
    path = None
    remote_arch, resolved = None, None
    try:
        ref = hub.parse(spec.model.checkpoint)
        if ref is not None:
            path, remote_arch, resolved = _from_hub(ref, spec.action)
        else:
            path = resolve_checkpoint_path(spec.model.checkpoint)
    except LauncherError as err:
        problems.extend(err.problems)
    if path is not None and not path.startswith(hub.PREFIX) and Path(path).expanduser().exists():
        try:
            checkpoint = inspect(Path(path).expanduser(), spec.model.format)
        except LauncherError as err:
            problems.extend(err.problems)
    elif not problems and remote_arch is None and (
            spec.action in NEEDS_WEIGHTS or (spec.model.arch is None and spec.action != Action.plan)):
        where = f"'{path}' does not exist" if path else "is not set"
        problems.append(
            Problem("model.checkpoint", f"{where}; action={spec.action.value} needs the weights",
                    "point model.checkpoint at a checkpoint on this machine")
        )
    arch = checkpoint.arch if checkpoint else remote_arch or spec.model.arch
    spec = replace(spec, model=default_lengths(spec.model, arch))
    return Deployment(
        spec=spec,
        arch=arch,
        checkpoint=checkpoint,
        checkpoint_path=path,
        paths=DeployPaths(Path(spec.output_dir)),
        overrides=overrides,
        load_problems=problems,
        hub=resolved,
    )
