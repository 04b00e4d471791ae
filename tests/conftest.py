"""Shared helpers: compose a spec in-process, run the CLI in a subprocess, write checkpoint stubs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from launcher.cli import CONF_DIR
from launcher.pipeline import Outcome, deploy

REPO = Path(__file__).resolve().parent.parent
LLM_LAUNCH = [sys.executable, "-m", "launcher.cli"]


def compose_spec(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def run_deploy(tmp_path: Path) -> Callable[..., Outcome]:
    """Compose with overrides and run the pipeline, outputs and cache under ``tmp_path``."""

    def run(*overrides: str) -> Outcome:
        defaults = [f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
        return deploy(compose_spec([*defaults, *overrides]), tuple(overrides))

    return run


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``llm-launch`` in a subprocess (as a user runs it)."""
    return subprocess.run([*LLM_LAUNCH, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def write_hf_config(directory: Path, **overrides: object) -> Path:
    """An HF directory whose config says Llama (a safetensors file without tensors: inspect reads only headers)."""
    config = {
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 128,
        "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 512, "max_position_embeddings": 1024, "torch_dtype": "float32",
        **overrides,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    return directory
