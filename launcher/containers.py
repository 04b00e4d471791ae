"""NVIDIA's Triton containers, one table (``containers.json``, written by ``scripts/container_table.py``
from triton-inference-server/server's compatibility matrix and release build files): container tag ->
Triton, TensorRT-LLM and vLLM versions, the TensorRT-LLM runtimes its trtllm container ships, where
each row was read, and the default row per backend/runtime."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "containers.json"
TAG = re.compile(r"(\d{2}\.\d{2})(?:[.-].*)?")  # "25.05", "25.05-trtllm-python-py3"
IMAGE_TAG = re.compile(r"tritonserver:(\d{2}\.\d{2})(?:[.-][^/]*)?$")  # ...tritonserver:25.05-trtllm-python-py3


@dataclass(frozen=True)
class Container:
    tag: str  # YY.MM
    triton: str | None
    trtllm: str | None  # TensorRT-LLM in <tag>-trtllm-python-py3; None where no source read says
    vllm: str | None  # vLLM in <tag>-vllm-python-py3
    runtimes: tuple[str, ...]  # TensorRT-LLM runtimes the trtllm container ships: engine, llmapi
    source: str

    @property
    def bounds_http_input(self) -> bool:
        """Whether its ``tritonserver`` takes ``--http-max-input-size`` (Triton 2.58, container 25.05, on:
        server PR #8174). Older servers read any body, and 2.51 crashes on an 8 MB form-encoded POST."""
        return self.triton is not None and tuple(int(part) for part in self.triton.split(".")[:2]) >= (2, 58)

    def lock(self) -> dict[str, object]:
        """What ``lock.json`` records of the row used."""
        return {"tag": self.tag, "triton": self.triton, "trtllm": self.trtllm, "vllm": self.vllm,
                "runtimes": list(self.runtimes), "source": self.source}


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text())


@cache
def containers() -> tuple[Container, ...]:
    """Every row, oldest first."""
    return tuple(Container(row["tag"], row["triton"], row["trtllm"], row["vllm"], tuple(row["runtimes"]),
                           row["source"]) for row in _table()["containers"])


def release(tag: str) -> str | None:
    """``"25.05"`` from a tag with or without suffix; None when it is not a YY.MM release."""
    match = TAG.fullmatch(tag)
    return match[1] if match else None


def image_tag(image: str) -> str | None:
    """The release of a ``.../tritonserver:<tag>-<suffix>`` image (pyxis ``#`` forms too); None if unknown."""
    match = IMAGE_TAG.search(image)
    return match[1] if match else None


def find(tag: str) -> Container | None:
    """The row of ``tag`` (suffix ignored), None for a tag the table does not know."""
    wanted = release(tag)
    return next((row for row in containers() if row.tag == wanted), None)


def default(kind: str) -> Container:
    """The default row for ``kind``: a backend name (vllm, pytorch) or a TensorRT-LLM runtime (engine, llmapi)."""
    tag = _table()["defaults"].get(kind) or _table()["defaults"]["pytorch"]
    row = find(tag)
    assert row is not None, f"containers.json: default {kind}={tag} has no row"
    return row


def shipping(trtllm: str) -> list[Container]:
    """The rows whose trtllm container ships TensorRT-LLM ``trtllm``, newest first."""
    return [row for row in reversed(containers()) if row.trtllm == trtllm]
