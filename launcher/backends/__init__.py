"""Backends are plugins: every module in this package that defines ``BACKEND`` is one."""

from __future__ import annotations

import importlib
import pkgutil

from launcher.backends.base import Backend
from launcher.errors import user_error


def _discover() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for module in pkgutil.iter_modules(__path__):
        backend = getattr(importlib.import_module(f"{__name__}.{module.name}"), "BACKEND", None)
        if backend is not None:
            found[backend.name] = backend
    return found


BACKENDS = _discover()


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise user_error("backend.name", f"unknown backend '{name}'", f"choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
