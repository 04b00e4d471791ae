"""Signals and faults during an export: SIGINT exits 130 and SIGTERM 143 with one line; a SIGKILLed export's
temp dir is removed by the next one; a disk that fills up is one line naming cache_dir. Nothing is left
half-written in the cache.

The checkpoint is ours: the tiny model's tokenizer with zero-filled weights of a larger Llama shape
(about 370 MB in float32), so its export to bfloat16 takes long enough to be interrupted.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import write_hf

EXPORT = ("model=tiny-llama", "model.max_input_len=128", "model.max_output_len=32", "precision=bf16",
          "action=export")
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 2, "num_attention_heads": 16,
         "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 32000}


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_file

    directory = write_hf(tmp_path_factory.mktemp("large") / "hf")
    config = json.loads((directory / "config.json").read_text()) | SHAPE
    (directory / "config.json").write_text(json.dumps(config))
    h, kv, ffn = SHAPE["hidden_size"], SHAPE["num_key_value_heads"] * SHAPE["head_dim"], SHAPE["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (SHAPE["vocab_size"], h), "lm_head.weight": (SHAPE["vocab_size"], h),
              "model.norm.weight": (h,)}
    for layer in range(SHAPE["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        shapes |= {prefix + "input_layernorm.weight": (h,), prefix + "post_attention_layernorm.weight": (h,),
                   prefix + "self_attn.q_proj.weight": (h, h), prefix + "self_attn.k_proj.weight": (kv, h),
                   prefix + "self_attn.v_proj.weight": (kv, h), prefix + "self_attn.o_proj.weight": (h, h),
                   prefix + "mlp.gate_proj.weight": (ffn, h), prefix + "mlp.up_proj.weight": (ffn, h),
                   prefix + "mlp.down_proj.weight": (h, ffn)}
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, directory / "model.safetensors")
    return directory


def start(checkpoint: Path, root: Path, *overrides: str, limit_bytes: int | None = None) -> subprocess.Popen[str]:
    def limits() -> None:
        if limit_bytes is not None:  # Python ignores SIGXFSZ: a write past the limit fails (EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "launcher.cli", *EXPORT, f"model.checkpoint={checkpoint}",
                             f"cache_dir={root / 'cache'}", f"output_dir={root / 'out'}", *overrides], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limits,
                            env={**os.environ, "TMPDIR": str(root), "HF_HUB_OFFLINE": "1"})


def wait_exporting(root: Path, timeout_s: float = 120) -> None:
    """Until the export has its temp dir in the cache (the conversion is under way)."""
    deadline = time.monotonic() + timeout_s
    while not list((root / "cache").glob(".*.tmp")):
        assert time.monotonic() < deadline, "the export never started"
        time.sleep(0.02)


def cache_entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "cache").iterdir()) if (root / "cache").exists() else []


@pytest.mark.parametrize(("signum", "status", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                         (signal.SIGTERM, 143, "SIGTERM")], ids=["sigint", "sigterm"])
def test_a_signal_during_export_stops_it_cleanly(large: Path, tmp_path: Path, signum: int, status: int,
                                                 name: str) -> None:
    run = start(large, tmp_path)
    wait_exporting(tmp_path)
    run.send_signal(signum)
    out, err = run.communicate(timeout=60)
    assert run.returncode == status, out + err
    assert err.strip() == f"stopped by {name} during action=export; nothing was left half-written", err
    assert cache_entries(tmp_path) == []  # neither an entry nor a temp dir


def test_a_killed_export_is_cleaned_up_by_the_next(large: Path, tmp_path: Path) -> None:
    run = start(large, tmp_path)
    wait_exporting(tmp_path)
    run.kill()
    run.wait()
    left = cache_entries(tmp_path)
    assert len(left) == 1 and left[0].endswith(".tmp")  # SIGKILL leaves the temp dir behind...
    again = start(large, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, out + err
    assert [name for name in cache_entries(tmp_path) if name.endswith(".tmp")] == []  # ...until the next export


def test_a_full_disk_during_export_is_one_line(large: Path, tmp_path: Path) -> None:
    run = start(large, tmp_path, limit_bytes=64 * 1024**2)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error cache_dir: cannot write the export into"), err
    assert "Traceback" not in out + err
    assert cache_entries(tmp_path) == []
