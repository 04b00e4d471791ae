"""The inspect stage: a spec plus what is known about its checkpoint, and every path derived from it."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from launcher.checkpoints import Checkpoint, inspect, resolve_checkpoint_path
from launcher.errors import LauncherError, Problem
from launcher.spec import Action, DeploySpec, ModelArch

NEEDS_WEIGHTS = (Action.export, Action.serve, Action.smoke)


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


@dataclass
class Deployment:
    spec: DeploySpec
    arch: ModelArch | None  # from the checkpoint when it is here, else from the model config
    checkpoint: Checkpoint | None  # None when the weights are not on this machine
    checkpoint_path: str | None  # model.checkpoint with pkg: references resolved
    paths: DeployPaths
    overrides: tuple[str, ...] = ()  # command-line overrides that composed the spec
    load_problems: list[Problem] = field(default_factory=list)  # found while inspecting

    @property
    def checkpoint_format(self) -> str:
        return self.checkpoint.format if self.checkpoint else self.spec.model.format.value

    @property
    def cache_root(self) -> Path:
        return Path(self.spec.cache_dir).expanduser()

    def cache_key(self, kind: str, **settings: object) -> str:
        """Content-addressed key: the checkpoint's fingerprint + converter version + settings."""
        from launcher.cache import CONVERTER_VERSION

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


def resolve(spec: DeploySpec, overrides: tuple[str, ...] = ()) -> Deployment:
    """Find the checkpoint (if it is on this machine) and read its architecture."""
    problems: list[Problem] = []
    checkpoint = None
    path = None
    try:
        path = resolve_checkpoint_path(spec.model.checkpoint)
    except LauncherError as err:
        problems.extend(err.problems)
    if path is not None and Path(path).expanduser().exists():
        try:
            checkpoint = inspect(Path(path).expanduser(), spec.model.format)
        except LauncherError as err:
            problems.extend(err.problems)
    elif spec.action in NEEDS_WEIGHTS or (spec.model.arch is None and spec.action != Action.plan):
        where = f"'{path}' does not exist" if path else "is not set"
        problems.append(
            Problem("model.checkpoint", f"{where}; action={spec.action.value} needs the weights",
                    "point model.checkpoint at a checkpoint on this machine")
        )
    arch = checkpoint.arch if checkpoint else spec.model.arch
    return Deployment(
        spec=spec,
        arch=arch,
        checkpoint=checkpoint,
        checkpoint_path=path,
        paths=DeployPaths(Path(spec.output_dir)),
        overrides=overrides,
        load_problems=problems,
    )
