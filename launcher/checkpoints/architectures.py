"""Which model architectures (HF ``config.json`` ``architectures[0]``) each serving engine loads.

The table is ``architectures.json`` next to this file, written by ``scripts/engine_architectures.py`` from the
installed vLLM and transformers and from TensorRT-LLM's source (importing the engines takes seconds; reading
the table does not). Engines: ``transformers`` (the pytorch backend), ``vllm``, ``trtllm-llmapi`` (TensorRT-LLM's
PyTorch backend) and ``trtllm-engine`` (TensorRT engines built from a TensorRT-LLM checkpoint). Each entry also
records the engine version and where its list came from (``describe``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("architectures.json")


@functools.cache
def _engines() -> dict[str, dict[str, Any]]:
    return json.loads(TABLE.read_text())["engines"]


@functools.cache
def supported(engine: str) -> frozenset[str]:
    """The architectures ``engine`` loads; ValueError for an engine the table does not have."""
    try:
        return frozenset(_engines()[engine]["architectures"])
    except KeyError:
        raise ValueError(f"unknown engine {engine!r} (the table has: {', '.join(sorted(_engines()))})") from None


def engines_for(architecture: str) -> list[str]:
    """The engines (sorted by name) that load ``architecture``; empty if none does."""
    return sorted(engine for engine in _engines() if architecture in supported(engine))


def describe(engine: str) -> str:
    """``engine`` with the version its list was read from, e.g. ``vllm 0.32.0``, for messages."""
    supported(engine)  # unknown engine -> ValueError
    version = _engines()[engine]["version"]
    return f"{engine} {version}" if version else engine
