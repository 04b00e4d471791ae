"""The suite every backend passes: each registered backend (in-tree, or installed through the
``llm_launch.backends`` entry points) on every hardware shape and every target."""

from __future__ import annotations

import json

import pytest

from launcher import containers
from launcher.backends import BACKENDS, get_backend
from launcher.errors import LauncherError
from tests.conformance import HARDWARE, TARGETS, check_plan, check_render
from tests.repository import docker_argv


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend(conformance, backend: str, hardware: str, target: str) -> None:
    case = conformance.get(backend, hardware, target)
    check_plan(case)
    check_render(case)
    plugin = get_backend(backend)
    assert plugin.name == backend and plugin.spec_class().name == backend
    assert plugin.container_suffix and set(plugin.checkpoint_formats) and plugin.engine_packages
    if isinstance(case.render, LauncherError):
        return
    out = case.output_dir
    assert set(plugin.engine_packages) <= set(json.loads((out / "lock.json").read_text())["versions"])
    # NVIDIA's container for the backend, at the table's default row for it (launcher/containers.json)
    default = containers.default(backend if backend != "trtllm" else "llmapi").tag
    image = f"nvcr.io/nvidia/tritonserver:{default}-{plugin.container_suffix}"
    if target == "docker":
        assert image in docker_argv(out)
    elif target == "k8s":
        assert f"image: {image}\n" in (out / "k8s.yaml").read_text()
