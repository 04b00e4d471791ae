"""``conf/`` documents the serving keys: the server block of ``conf/config.yaml`` holds every ``ServerSpec`` key
with its default and a comment."""

from __future__ import annotations

import dataclasses

import yaml

from launcher.registry import CONF_DIR
from launcher.spec import ServerSpec


def test_config_yaml_documents_every_server_key() -> None:
    text = (CONF_DIR / "config.yaml").read_text()
    block = yaml.safe_load(text)["server"]
    defaults = ServerSpec()
    assert list(block) == [item.name for item in dataclasses.fields(ServerSpec)]
    assert block == {item.name: getattr(defaults, item.name) for item in dataclasses.fields(ServerSpec)}
    lines = text[text.index("\nserver:\n"):].splitlines()[2:]
    documented = {line.split(":")[0].strip() for line in lines if line.startswith("  ") and "#" in line}
    assert set(block) <= documented
