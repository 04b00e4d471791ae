"""The front end's image (``Dockerfile``, the k8s target's second container) holds what the front end needs.

No container is built here (no Docker daemon on the test machine): the test checks the Dockerfile installs the
``frontend`` extra, and that the front end, run as the pod runs it (app and CLI imported, a chat template applied
with a tokenizer from a directory), imports only modules of distributions in that extra's requirement closure
(read from the installed package's own metadata), so a ``pip install .[frontend]`` image can run it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.fixtures.tiny_models import tiny_tokenizer

PROGRAM = """
import importlib.metadata, json, sys
import launcher.frontend.app, launcher.frontend.cli
from launcher.interfaces import chat_prompt
assert chat_prompt(sys.argv[1], "What is the capital of France?")
names = importlib.metadata.packages_distributions()
print(json.dumps(sorted({dist for module in list(sys.modules) for dist in names.get(module.split(".")[0], [])})))
"""


def closure(project: str, extras: set[str]) -> set[str]:
    """The distributions ``project[extras]`` pulls in, by the requirement markers of the installed metadata."""
    seen: set[str] = set()
    todo = [(project, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        key = f"{canonicalize_name(name)}[{','.join(sorted(wanted))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # an optional dependency not installed here
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker and not any(requirement.marker.evaluate({"extra": extra})
                                              for extra in wanted | {""}):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return {key.split("[")[0] for key in seen}


def test_the_dockerfile_installs_the_frontend_extra_and_runs_the_k8s_command() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'pip install [^\n]*"\.\[frontend\]"', dockerfile)
    assert "USER 65534" in dockerfile  # not root
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!launcher/"]  # no .venv


def test_the_frontend_imports_only_what_its_extra_installs(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    tiny_tokenizer().save_pretrained(tokenizer)
    run = subprocess.run([sys.executable, "-c", PROGRAM, str(tokenizer)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    imported = {canonicalize_name(name) for name in json.loads(run.stdout)}
    allowed = closure("llm-launch", {"frontend"})
    assert "torch" not in imported and {"fastapi", "transformers", "tritonclient"} <= imported
    assert imported <= allowed, f"imported but not in .[frontend]: {sorted(imported - allowed)}"
