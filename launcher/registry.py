"""Hydra's ConfigStore entries: the spec's schemas and every backend's and target's own."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore

from launcher.backends import BACKENDS
from launcher.spec import DeploySpec, HardwareSpec, ModelSpec, PrecisionSpec
from launcher.targets import TARGETS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def register_configs() -> None:
    """Store the schemas; group entries in ``conf/`` start with ``defaults: [base_<name>]``. Each plugin's
    schema is also stored as ``<group>/<name>`` when ``conf/`` has no entry of that name, so a plugin
    installed from another package is selectable as it is (``backend=<name>``)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=DeploySpec)
    cs.store(group="model", name="base_model", node=ModelSpec)
    cs.store(group="precision", name="base_precision", node=PrecisionSpec)
    cs.store(group="hardware", name="base_hardware", node=HardwareSpec)
    for group, plugins in (("backend", BACKENDS), ("target", TARGETS)):
        for name, plugin in plugins.items():
            cs.store(group=group, name=f"base_{name}", node=plugin.spec_class)
            if not (CONF_DIR / group / f"{name}.yaml").is_file():
                cs.store(group=group, name=name, node=plugin.spec_class)
