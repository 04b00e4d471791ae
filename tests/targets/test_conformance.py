"""The suite every target passes: each registered target (in-tree, or installed through the
``llm_launch.targets`` entry points) with every in-tree backend on every hardware shape."""

from __future__ import annotations

import pytest

from launcher.backends import get_backend
from launcher.deployment import resolve
from launcher.errors import LauncherError
from launcher.pipeline import typed_spec
from launcher.targets import TARGETS, get_target
from tests.conformance import BACKENDS, HARDWARE, check_plan, check_render
from tests.conftest import compose_spec


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_target(conformance, backend: str, hardware: str, target: str) -> None:
    case = conformance.get(backend, hardware, target)
    check_plan(case)
    check_render(case)
    plugin = get_target(target)
    assert plugin.name == target and plugin.spec_class().name == target
    if isinstance(case.render, LauncherError):
        return
    dep = resolve(typed_spec(compose_spec([*case.overrides, "action=render"])))
    chosen = get_backend(backend)
    launch = plugin.launch(dep, chosen.plan(dep), chosen)
    assert launch.ranks and launch.step.kind == "launch" and launch.step.command
    hosts = {word.removeprefix("--http-address=") for rank in launch.ranks for word in rank
             if word.startswith("--http-address=")}
    assert len(hosts) == 1  # every rank listens where the target says
    for file in launch.files:
        path = case.output_dir / file.path
        assert path.is_file(), file.path
        mode = file.source.stat().st_mode if file.source else (0o755 if file.executable else 0o644)
        assert bool(path.stat().st_mode & 0o111) == bool(mode & 0o111), file.path  # copies keep their mode
