"""What every backend and every target must do, on every hardware shape (the conformance suites'
shared half, in the spirit of Hydra's ``LauncherTestSuite``): plan writes nothing, a refusal is one
line per problem naming a key, and a render holds configs Triton's schema parses, launch files for the
target and a ``lock.json`` that digests every file it wrote.

Each (backend, hardware, target) case is planned and rendered once per session and shared by
``tests/backends/test_conformance.py`` and ``tests/targets/test_conformance.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.pipeline import deploy
from launcher.plan import Outcome
from tests.conftest import compose_spec
from tests.repository import model_config

HARDWARE = ("cpu", "h100x1", "h100x2", "h100x8n2")
TARGETS = ("local", "docker", "slurm", "k8s")
BACKENDS = ("pytorch", "vllm", "trtllm")
MODEL = ("model=llama3-8b", "precision=bf16")  # its config carries the architecture: no weights needed
KEY = re.compile(r"[a-z_]+(\.[A-Za-z0-9_]+)*|/.+")  # a config key as typed on the command line, or a file


@dataclass
class Case:
    overrides: tuple[str, ...]
    root: Path  # the case's working directory: output_dir and cache_dir live under it
    plan: Outcome | LauncherError
    render: Outcome | LauncherError
    written_by_plan: list[str]

    @property
    def output_dir(self) -> Path:
        return self.root / "out"


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def attempt(overrides: tuple[str, ...]) -> Outcome | LauncherError:
    try:
        return deploy(compose_spec(list(overrides)), overrides)
    except LauncherError as err:
        return err


def run_case(root: Path, backend: str, hardware: str, target: str) -> Case:
    root.mkdir(parents=True, exist_ok=True)
    overrides = (*MODEL, f"backend={backend}", f"hardware={hardware}", f"target={target}",
                 f"output_dir={root / 'out'}", f"cache_dir={root / 'cache'}")
    before = files_under(root)
    planned = attempt((*overrides, "action=plan"))
    written = sorted(set(files_under(root)) - set(before))
    return Case(overrides, root, planned, attempt((*overrides, "action=render")), written)


class Cases:
    """Cases run on first use, kept for the session."""

    def __init__(self, root: Path) -> None:
        self.root, self.cases = root, {}

    def get(self, backend: str, hardware: str, target: str) -> Case:
        key = (backend, hardware, target)
        if key not in self.cases:
            self.cases[key] = run_case(self.root / "-".join(key), *key)
        return self.cases[key]


# ------------------------------------------------------------------------------------------- checks
def check_refusal(err: LauncherError) -> None:
    """Each problem is one line that names a key (or a file) and says what to do."""
    assert err.problems
    for problem in err.problems:
        assert KEY.fullmatch(problem.key), problem
        assert "\n" not in str(problem) and problem.message, problem


def check_plan(case: Case) -> None:
    """Plan writes nothing; its verdict is render's."""
    assert case.written_by_plan == []
    if isinstance(case.plan, LauncherError):
        check_refusal(case.plan)
        assert isinstance(case.render, LauncherError)
        assert [str(p) for p in case.render.problems] == [str(p) for p in case.plan.problems]
    else:
        kinds = [step.kind for step in case.plan.steps]
        assert kinds[kinds.index("render"):] in (["render", "launch"], ["render", "launch", "launch"])  # + front end
        assert all(step.command for step in case.plan.steps if step.kind == "launch"), "launch steps name commands"


def check_render(case: Case) -> None:
    """Configs parse with Triton's schema; lock.json digests every file under output_dir."""
    if isinstance(case.render, LauncherError):
        check_refusal(case.render)
        assert not case.output_dir.exists()
        return
    out = case.output_dir
    configs = sorted((out / "model_repository").glob("*/config.pbtxt"))
    assert configs
    for path in configs:
        assert model_config(path).name == path.parent.name
    lock = json.loads((out / "lock.json").read_text())
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"lock.json"}
    assert set(lock["files"]) == on_disk
    for relative, digest in lock["files"].items():
        assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest, relative
    assert all(lock["templates"].values())
