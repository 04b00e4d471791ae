"""Plugin discovery: every module of a package that defines a given attribute is one plugin."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any


def discover(path: Iterable[str], package: str, attribute: str) -> dict[str, Any]:
    """``{plugin.name: plugin}`` for each module under ``package`` (at ``path``) defining ``attribute``."""
    found: dict[str, Any] = {}
    for module in pkgutil.iter_modules(path):
        plugin = getattr(importlib.import_module(f"{package}.{module.name}"), attribute, None)
        if plugin is not None:
            found[plugin.name] = plugin
    return found
