"""Backends are plugins: every module or package here that defines ``BACKEND`` is one, and installed
packages add more through the ``llm_launch.backends`` entry-point group."""

from __future__ import annotations

from launcher.backends.base import Backend
from launcher.errors import user_error
from launcher.plugins import discover

BACKENDS: dict[str, Backend] = discover("llm_launch.backends", __path__, __name__, "BACKEND")


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise user_error("backend.name", f"unknown backend '{name}'", f"choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
