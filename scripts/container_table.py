#!/usr/bin/env python3
"""Write ``launcher/containers.json``, the table of NVIDIA's Triton containers, from upstream sources.

Reads, from a git directory of triton-inference-server/server (the search tool's ``fetch``):
- ``docs/introduction/compatibility.md`` on the default branch and on the newest ``r<YY.MM>`` branch:
  the TensorRT-LLM version of each ``<tag>-trtllm-python-py3`` and the vLLM version of each
  ``<tag>-vllm-python-py3`` container;
- ``build.py``/``TRITON_VERSION`` of each ``v2.*`` tag and release branch: the Triton version of a tag.
Rows the sources do not cover come from ``EXTRA`` below, each with where its values were read.

Which runtimes a row ships follows from its TensorRT-LLM version (``runtimes``): the llmapi Triton model
first shipped in tensorrtllm_backend v0.19.0; the C++ ``tensorrtllm`` backend and the inflight_batcher_llm
templates ship with every TensorRT-LLM before their deletion (July 2026, after 1.2).

    python scripts/container_table.py /work/.mirror/triton-inference-server+server/repo
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "launcher" / "containers.json"
COMPAT = "docs/introduction/compatibility.md"
LLMAPI_FIRST = (0, 19)  # tensorrtllm_backend v0.19.0 added all_models/llmapi
ENGINE_LAST = (1, 2)  # the C++ backend was deleted from TensorRT-LLM after its 1.2 line (July 2026)
ABOUT = (
    "NVIDIA's Triton containers <registry>:<tag>-<suffix>: Triton, TensorRT-LLM (trtllm-python-py3) and "
    'vLLM (vllm-python-py3) versions, and which TensorRT-LLM runtimes the trtllm container ships (engine:'
    ' the C++ tensorrtllm backend + inflight_batcher_llm; llmapi: the llmapi Triton model, first in '
    "tensorrtllm_backend v0.19.0). 'runtimes' is inferred from the TensorRT-LLM version by "
    "scripts/container_table.py's rule; a null version is one no source read states. 'defaults' (newest "
    'container whose versions llm-launch renders for; engine: TensorRT-LLM 0.19.0, DESIGN section 5) is '
    'checked by tests/test_containers.py.'
)
# The table's default row per backend/runtime: the newest container whose versions llm-launch renders for
# (engine: TensorRT-LLM 0.19.0, DESIGN section 5); tests/test_containers.py checks the rule.
DEFAULTS = {'engine': '25.05', 'llmapi': '26.07', 'vllm': '26.08', 'pytorch': '26.10'}
# Releases newer than the compatibility matrix, each value with where it was read.
EXTRA = {
    "26.09": {"triton": "2.73.0", "source": "triton-inference-server/server main build.py (2.73.0dev / 26.09dev) "
              "and NVIDIA's Triton release notes rel-26-09; TensorRT-LLM and vLLM versions not published there"},
    "26.10": {"triton": "2.74.0", "source": "NVIDIA's Triton release notes rel-26-10 (container 26.10, Triton 2.74); "
              "TensorRT-LLM and vLLM versions not published in the sources read"},
}


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def matrix(text: str, section: str) -> dict[str, str]:
    """``tag -> version`` from the table under ``## Container Name: <section>`` (the version column
    is the one whose header names the package)."""
    body = text.split(f"## Container Name: {section}", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|")]
    header, data = rows[0], rows[2:]
    column = next(i for i, name in enumerate(header) if name.endswith("-LLM version") or name == "vLLM version")
    return {row[0]: row[column].split("+")[0].replace(" ", "") for row in data}


def triton_versions(git_dir: str) -> dict[str, str]:
    """Container tag -> Triton version, from each release tag's and release branch's build.py."""
    found = {}
    refs = git(git_dir, "for-each-ref", "--format=%(refname:short)", "refs/tags/v2.*", "refs/heads/r2*").split()
    for ref in refs:
        try:
            build = git(git_dir, "show", f"{ref}:build.py")
            version = git(git_dir, "show", f"{ref}:TRITON_VERSION").strip()
        except subprocess.CalledProcessError:
            continue
        container = re.search(r'"triton_container_version":\s*"(\d\d\.\d\d)|"[\d.]+(?:dev)?":\s*\(\s*"(\d\d\.\d\d)',
                              build)
        if container and not version.endswith("dev"):
            found[container[1] or container[2]] = version
    return found


def release(version: str | None) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match[1]), int(match[2])) if match else None


def runtimes(trtllm: str | None) -> list[str]:
    have = release(trtllm)
    if have is None:
        return []
    return [name for name, ok in (("engine", have <= ENGINE_LAST), ("llmapi", have >= LLMAPI_FIRST)) if ok]


def main() -> None:
    git_dir = sys.argv[1]
    head = git(git_dir, "rev-parse", "HEAD").strip()
    branches = sorted(git(git_dir, "for-each-ref", "--format=%(refname:short)", "refs/heads/r2*").split(),
                      key=lambda name: release(name[1:]) or (0, 0))
    newest = branches[-1]
    texts = {"HEAD": git(git_dir, "show", f"HEAD:{COMPAT}"), newest: git(git_dir, "show", f"{newest}:{COMPAT}")}
    trtllm, vllm, seen_in = {}, {}, {}
    for ref, text in texts.items():
        for tag, version in matrix(text, "trtllm-python-py3").items():
            trtllm.setdefault(tag, version)
            seen_in.setdefault(tag, ref)
        for tag, version in matrix(text, "vllm-python-py3").items():
            vllm.setdefault(tag, version)
            seen_in.setdefault(tag, ref)
    tritons = triton_versions(git_dir)
    rows = []
    for tag in sorted(set(trtllm) | set(vllm) | set(EXTRA), key=release):
        extra = EXTRA.get(tag, {})
        ref = seen_in.get(tag)
        source = (f"triton-inference-server/server {COMPAT} @ {head[:9] if ref == 'HEAD' else ref}"
                  + ("; Triton version from that release's build.py" if tag in tritons else "")) if ref else ""
        rows.append({"tag": tag, "triton": tritons.get(tag) or extra.get("triton"), "trtllm": trtllm.get(tag),
                     "vllm": vllm.get(tag), "runtimes": runtimes(trtllm.get(tag)),
                     "source": "; ".join(filter(None, (source, extra.get("source"))))})
    OUT.write_text(json.dumps({"about": ABOUT, "generated_by": "scripts/container_table.py", "server_commit": head,
                               "release_branch": newest, "defaults": DEFAULTS,
                               "containers": rows}, indent=1) + "\n")
    print(OUT, len(rows))


if __name__ == "__main__":
    main()
