"""Which container (and so which TensorRT-LLM) a TensorRT-LLM deployment renders for, and the facts of
that version llm-launch renders from (``versions/*.json``, each with its upstream source).

The row comes from ``target.tag`` (or the tag of a Slurm ``target.container_image``), else from
``backend.trtllm_version``, else from the table's default for the runtime (engine: 25.05, TensorRT-LLM
0.19.0; llmapi: the newest container llm-launch renders for). Local and Slurm-without-image render for
that default row too.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from launcher import containers
from launcher.containers import Container
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.spec import ContainerTargetSpec

FACTS = Path(__file__).resolve().parent / "versions"
# TensorRT-LLM versions llm-launch renders each runtime for (the facts below exist for them)
RENDERS = {"engine": ("0.19.0",), "llmapi": ("1.2.0", "1.2.1")}
MODELOPT = "0.46.0"  # the Model-Optimizer release whose hf_ptq.py the quantize step runs (versions/modelopt.json)
# trtllm-build flags of TensorRT-LLM 0.19 (tensorrt_llm/commands/build.py parse_arguments, the index's stored
# copy @008b2b8d: auto-parallel era, <= 1.1), plus the plugin flags add_plugin_argument adds for the
# PluginConfig fields we set; quantize.py (examples/quantization/quantize.py) of the same line.
ENGINE_FACTS = "engine-0.19.0.json"


@cache
def facts(name: str) -> dict[str, Any]:
    return json.loads((FACTS / name).read_text())


def runtime_name(dep: Deployment) -> str:
    return dep.spec.backend.runtime.value


def explicit_tag(dep: Deployment) -> tuple[str, str] | None:
    """``(key, tag)`` the spec names: ``target.tag``, or the tag of a Slurm ``target.container_image``."""
    target = dep.spec.target
    if isinstance(target, ContainerTargetSpec) and target.tag:
        return "target.tag", str(target.tag)
    image = getattr(target, "container_image", None)
    if image and (tag := containers.image_tag(str(image))):
        return "target.container_image", tag
    return None


def container(dep: Deployment) -> Container | None:
    """The row the deployment renders for; None when the spec names a tag the table does not know."""
    named = explicit_tag(dep)
    if named is not None:
        return containers.find(named[1])
    wanted = dep.spec.backend.trtllm_version
    if wanted:
        runtime = runtime_name(dep)
        rows = [row for row in containers.shipping(wanted) if runtime in row.runtimes]
        return rows[0] if rows else None
    return containers.default(runtime_name(dep))


def trtllm_version(dep: Deployment) -> str:
    """The TensorRT-LLM version rendered for (``backend.trtllm_version`` wins where the row has none)."""
    row = container(dep)
    return dep.spec.backend.trtllm_version or (row.trtllm if row else None) or "unknown"


def problems(dep: Deployment) -> list[Problem]:
    """A runtime paired with a container that cannot serve it (or that llm-launch does not render for)."""
    runtime, wanted = runtime_name(dep), dep.spec.backend.trtllm_version
    works = containers.default(runtime).tag
    named = explicit_tag(dep)
    key, tag = named if named else ("backend.trtllm_version", None)
    row = container(dep)
    fix = f"set {key if named else 'target.tag'}={works}" + ("" if named else " or leave backend.trtllm_version unset")
    if row is None:
        what = f"'{tag}' is not a Triton release in launcher/containers.json" if named else \
            f"{wanted}: no container in launcher/containers.json ships TensorRT-LLM {wanted} with the {runtime} runtime"
        return [Problem(key, what, fix)]
    version = wanted or row.trtllm
    if wanted and row.trtllm and wanted != row.trtllm:
        return [Problem("backend.trtllm_version", f"{wanted}, but container {row.tag} ships TensorRT-LLM {row.trtllm}",
                        f"set backend.trtllm_version={row.trtllm}, or leave it unset")]
    if version is None:
        return [Problem(key, f"'{row.tag}': no source read says which TensorRT-LLM its trtllm container ships",
                        f"set backend.trtllm_version=<its version>, or {key}={works}")]
    if row.trtllm and runtime not in row.runtimes:
        return [Problem(key, f"'{row.tag}' ships TensorRT-LLM {row.trtllm}, whose container has no {runtime} "
                        f"runtime ({describe(runtime)})", f"set {key}={works}")]
    if version not in RENDERS[runtime]:
        return [Problem(key, f"'{row.tag}' ships TensorRT-LLM {version}; llm-launch renders the {runtime} runtime "
                        f"for TensorRT-LLM {' / '.join(RENDERS[runtime])} only", f"set {key}={works}")]
    return []


def describe(runtime: str) -> str:
    return {"engine": "the C++ tensorrtllm backend left TensorRT-LLM after 1.2",
            "llmapi": "the llmapi Triton model first shipped with TensorRT-LLM 0.19.0"}[runtime]


def llm_args_schema(version: str) -> dict[str, Any]:
    """The LlmArgs schema of ``version`` (``versions/llm_args-<major.minor>.json``)."""
    return facts(f"llm_args-{'.'.join(version.split('.')[:2])}.json")


def modelopt() -> dict[str, Any]:
    """The facts of Model-Optimizer ``MODELOPT`` (script path, flags, qformat names)."""
    return next(r for r in facts("modelopt.json")["releases"] if r["version"] == MODELOPT)


def lock(dep: Deployment) -> dict[str, Any]:
    """What ``lock.json`` records: the container row and the TensorRT-LLM version rendered for."""
    row = container(dep)
    return {"container": {**(row.lock() if row else {}), "trtllm_rendered_for": trtllm_version(dep),
                          "runtime": runtime_name(dep)}}
