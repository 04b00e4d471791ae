"""The front end's image (``Dockerfile``, the k8s target's second container) holds what the front end needs.

No container is built here (no Docker daemon on the test machine): the test checks the Dockerfile installs the
``frontend`` extra, and that the front end runs as the pod runs it (app and CLI imported, a chat template applied
with a tokenizer from a directory) in an interpreter where every installed distribution outside that extra's
requirement closure (read from the installed package's own metadata) cannot be imported, as in the image.
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
sys.modules.update(dict.fromkeys(json.loads(sys.argv[2])))  # absent: import fails, find_spec finds nothing
import launcher.frontend.app, launcher.frontend.cli, uvicorn  # uvicorn: what run() serves with
from launcher.interfaces import chat_prompt
assert chat_prompt(sys.argv[1], "What is the capital of France?")
names = importlib.metadata.packages_distributions()
loaded = {name.split(".")[0] for name, module in list(sys.modules.items()) if module is not None}
print(json.dumps({name: names[name] for name in sorted(loaded) if name in names}))
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
    allowed = closure("llm-launch", {"frontend"})
    absent = sorted(module for module, dists in metadata.packages_distributions().items()
                    if module.isidentifier() and not {canonicalize_name(d) for d in dists} & allowed)
    assert "torch" in absent and "transformers" not in absent
    run = subprocess.run([sys.executable, "-c", PROGRAM, str(tokenizer), json.dumps(absent)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = {module: {canonicalize_name(d) for d in dists} for module, dists in json.loads(run.stdout).items()}
    assert {"fastapi", "transformers", "tokenizers", "tritonclient", "uvicorn"} <= set().union(*imported.values())
    outside = {module: sorted(dists) for module, dists in imported.items() if not dists & allowed}  # namespace
    assert not outside, f"imported, but installed by no distribution of .[frontend]: {outside}"  # pkgs: any
