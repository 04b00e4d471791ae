"""Plugin discovery: backends and targets come from an entry-point group, and from their in-tree package.

A separate package adds a backend by declaring, in its own ``pyproject.toml``::

    [project.entry-points."llm_launch.backends"]
    sglang = "my_package.sglang:BACKEND"

The in-tree plugins are registered the same way in this project's ``pyproject.toml``; scanning the
in-tree package as well keeps them discoverable from an uninstalled checkout (``PYTHONPATH=.``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from launcher.errors import user_error


def discover(group: str, path: Iterable[str], package: str, attribute: str) -> dict[str, Any]:
    """``{plugin.name: plugin}``: each module under ``package`` defining ``attribute``, then ``group``'s
    entry points (an installed plugin may not reuse an in-tree name)."""
    found: dict[str, Any] = {}
    for module in pkgutil.iter_modules(path):
        plugin = getattr(importlib.import_module(f"{package}.{module.name}"), attribute, None)
        if plugin is not None:
            found[plugin.name] = plugin
    for entry in metadata.entry_points(group=group):
        if entry.value.startswith(f"{package}."):
            continue  # an in-tree plugin, already found above
        try:
            plugin = entry.load()
        except Exception as err:  # a broken third-party package must not hide the others' names
            raise user_error(f"entry point {group}:{entry.name}", f"cannot load '{entry.value}': {err}",
                             "fix or uninstall the package that declares it") from err
        if plugin.name in found:
            raise user_error(f"entry point {group}:{entry.name}", f"'{entry.value}' reuses the name "
                             f"'{plugin.name}' of another plugin", "give the plugin another name")
        found[plugin.name] = plugin
    return found
