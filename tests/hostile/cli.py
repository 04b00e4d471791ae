"""Run hostile inputs through the real ``llm-launch`` CLI and check what a user would see.

Every case runs ``python -m launcher.cli model=tiny-llama model.checkpoint=<file> action=...`` in a
subprocess with its own output_dir, cache_dir, TMPDIR and an empty ``$HOME``, all under the case's
directory, and is held when: the exit status is 2, stderr is exactly one line naming the file or key,
there is no traceback anywhere, nothing was written (output, cache, temp, home), the input is untouched
and no payload marker (``pwned*``) appeared. All selected cases start in the background when the hostile
session starts (tests/hostile/conftest.py), one per core, while the in-process tests (fuzzing) run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "pwned"  # payloads only ever try to create files named pwned* inside their case directory
BASE_OVERRIDES = ("model=tiny-llama", "model.max_input_len=128", "model.max_output_len=32")


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(case_dir)`` writes it and returns the path for ``model.checkpoint``."""

    id: str
    build: Callable[[Path], Path]
    expect: tuple[str, ...]  # substrings the single error line must contain ("{path}" = the checkpoint)
    action: str = "plan"
    overrides: tuple[str, ...] = ()


@dataclass
class Outcome:
    case: Case
    root: Path
    checkpoint: Path
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, tuple[int, int]] = field(default_factory=dict)


def _tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``directory``."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def _environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "LLM_LAUNCH", "HF_", "TORCH"))}
    for name in ("tmp", "home"):
        (root / name).mkdir()
    return {**env, "TMPDIR": str(root / "tmp"), "HOME": str(root / "home"), "PYTHONDONTWRITEBYTECODE": "1",
            "HF_HUB_OFFLINE": "1"}


def _build(case: Case, root: Path) -> Outcome:
    (root / "input").mkdir(parents=True)
    checkpoint = case.build(root / "input")
    return Outcome(case, root, checkpoint, -1, "", "", _tree(root / "input"))


def _run(outcome: Outcome) -> Outcome:
    case, root, checkpoint = outcome.case, outcome.root, outcome.checkpoint
    command = [sys.executable, "-m", "launcher.cli", *BASE_OVERRIDES, f"model.checkpoint={checkpoint}",
               f"action={case.action}", f"output_dir={root / 'out'}", f"cache_dir={root / 'cache'}",
               *case.overrides]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env=_environment(root))
    outcome.returncode, outcome.stdout, outcome.stderr = done.returncode, done.stdout, done.stderr
    return outcome


def start(cases: list[Case], base: Path) -> tuple[dict[str, Future[Outcome]], Callable[[], None]]:
    """Build the cases one after another in a background thread and run each one's CLI as soon as it is
    built, ``os.cpu_count()`` at a time; returns the outcomes by case id and a function that waits for all."""
    ids = [case.id for case in cases]
    assert len(set(ids)) == len(ids), "case ids must be unique"
    builder, runner = ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    built = {case.id: builder.submit(_build, case, base / case.id) for case in cases}
    outcomes = {case_id: runner.submit(lambda f=future: _run(f.result())) for case_id, future in built.items()}

    def wait() -> None:
        builder.shutdown()
        runner.shutdown()

    return outcomes, wait


# Importing transformers imports torch._dynamo, which creates an empty $TMPDIR/torchinductor_<user> (torch's
# cache directory) in any process; it holds nothing of ours, so only that empty directory is tolerated.
_TORCH_CACHE_DIR = "torchinductor_"


def leftovers(directory: Path) -> list[str]:
    """What is left under ``directory`` (missing = nothing), except torch's empty cache directory."""
    if not directory.exists():
        return []
    return [str(p.relative_to(directory)) for p in directory.rglob("*")
            if not (p.is_dir() and p.name.startswith(_TORCH_CACHE_DIR) and not any(p.iterdir()))]


def assert_refused(outcome: Outcome) -> None:
    """The user-error contract: exit 2, one line naming the file or key, no traceback, nothing left behind."""
    root = outcome.root
    shown = f"rc={outcome.returncode}\nstdout={outcome.stdout[-2000:]}\nstderr={outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, shown
    assert outcome.returncode == 2, shown
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    for expected in outcome.case.expect:
        assert expected.replace("{path}", str(outcome.checkpoint)) in lines[0], shown
    assert not list(root.rglob(f"{MARKER}*")), "a payload ran"
    for written in ("out", "cache", "tmp", "home"):
        assert not leftovers(root / written), f"left in {written}: {leftovers(root / written)}"
    assert _tree(root / "input") == outcome.before, "the input checkpoint was modified"
    assert {p.name for p in root.iterdir()} <= {"input", "tmp", "home", "cache"}, sorted(root.iterdir())
