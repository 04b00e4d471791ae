"""What GPUs this machine has (via nvidia-smi, so no CUDA library is imported)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: float
    memory_gb: float


def detect_gpus() -> list[Gpu]:
    """The GPUs ``nvidia-smi`` lists; empty when there is none (or no driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    query = "--query-gpu=index,name,compute_cap,memory.total"
    try:
        out = subprocess.run([smi, query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, cc, mem = (field.strip() for field in line.split(","))
        gpus.append(Gpu(int(index), name, float(cc), float(mem) / 1024))
    return gpus
