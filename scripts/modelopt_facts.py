#!/usr/bin/env python3
"""Write ``launcher/backends/trtllm/versions/modelopt.json``: per NVIDIA Model-Optimizer release, the PTQ
script's path, its ``--`` flags, and the ``--qformat`` / ``--kv_cache_qformat`` choices.

Reads a git directory of NVIDIA/Model-Optimizer (the search tool's ``fetch``): the script is
``examples/llm_ptq/hf_ptq.py`` up to 0.45 and ``examples/hf_ptq/hf_ptq.py`` from 0.46; its flags are
the ``"--name"`` literals of its ``add_argument`` calls; the qformats are the keys of its own
``QUANT_CFG_CHOICES`` dict (<= 0.3x) or the preset YAML basenames under
``modelopt_recipes/configs/ptq/presets/{model,kv}/`` plus ``QFORMAT_ALIASES`` (0.4x presets).

    python scripts/modelopt_facts.py /work/.mirror/NVIDIA+Model-Optimizer/repo 0.27.0 0.45.0 0.46.0 HEAD
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "launcher" / "backends" / "trtllm" / "versions" / "modelopt.json"
PRESETS = "modelopt_recipes/configs/ptq/presets"


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True).stdout


def dict_keys(source: str, name: str) -> list[str]:
    """Keys of a module-level ``name = {...}`` dict literal."""
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and isinstance(node.value, ast.Dict):
            return [key.value for key in node.value.keys if isinstance(key, ast.Constant)]
    return []


def facts(git_dir: str, ref: str) -> dict:
    files = git(git_dir, "ls-tree", "-r", "--name-only", ref).split()
    script = next(f for f in files if f.endswith("/hf_ptq.py") and f.startswith("examples/"))
    source = git(git_dir, "show", f"{ref}:{script}")
    flags = sorted(set(re.findall(r'add_argument\(\s*"(--[a-z_]+)"', source)))
    presets = {kind: sorted(Path(f).stem for f in files if f.startswith(f"{PRESETS}/{kind}/") and f.endswith(".yaml"))
               for kind in ("model", "kv")}
    if presets["model"]:
        preset_source = git(git_dir, "show", f"{ref}:modelopt/recipe/presets.py")
        aliases = dict_keys(preset_source, "QFORMAT_ALIASES")
        qformats, kv = sorted({*presets["model"], *aliases}), sorted({"none", *presets["kv"]})
    else:
        qformats = dict_keys(source, "QUANT_CFG_CHOICES")
        kv = sorted({"none", *dict_keys(source, "KV_QUANT_CFG_CHOICES")})
    version = ref if ref != "HEAD" else git(git_dir, "describe", "--tags", "--abbrev=0", "HEAD").strip() + "+HEAD"
    return {"version": version, "commit": git(git_dir, "rev-parse", f"{ref}^{{commit}}").strip(), "script": script,
            "flags": flags, "qformats": qformats, "kv_cache_qformats": kv}


def main() -> None:
    git_dir, refs = sys.argv[1], sys.argv[2:]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    releases = [facts(git_dir, ref) for ref in refs]
    OUT.write_text(json.dumps({"generated_by": "scripts/modelopt_facts.py", "repo": "NVIDIA/Model-Optimizer",
                               "releases": releases}, indent=1) + "\n")
    print(OUT, [r["version"] for r in releases])


if __name__ == "__main__":
    main()
