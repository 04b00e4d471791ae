"""Hydra's ConfigStore entries: the spec's schemas and every backend's and target's own."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from launcher.backends import BACKENDS
from launcher.spec import DeploySpec, HardwareSpec, ModelSpec, PrecisionSpec
from launcher.targets import TARGETS


def register_configs() -> None:
    """Store the schemas; group entries in ``conf/`` start with ``defaults: [base_<name>]``."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=DeploySpec)
    cs.store(group="model", name="base_model", node=ModelSpec)
    cs.store(group="precision", name="base_precision", node=PrecisionSpec)
    cs.store(group="hardware", name="base_hardware", node=HardwareSpec)
    for name, backend in BACKENDS.items():
        cs.store(group="backend", name=f"base_{name}", node=backend.spec_class)
    for name, target in TARGETS.items():
        cs.store(group="target", name=f"base_{name}", node=target.spec_class)
