"""Each converter family logits-checked against transformers: GGUF -> HF, NeMo 2.0 (written by NeMo 2.7.3) -> HF,
HF -> TensorRT-LLM checkpoint (TP 1 and 2, back by an independent inverse), and the TensorRT-LLM checkpoint against
the ones ModelOpt 0.37 wrote from the same NeMo models."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save_file

from launcher.checkpoints import inspect
from launcher.checkpoints.families import FAMILIES
from launcher.convert import to_hf
from launcher.convert.trtllm_writer import to_trtllm
from launcher.errors import LauncherError
from tests.convert.trtllm_inverse import reassemble
from tests.fixtures.tiny_families import GGUF_ARCHS, write_family, write_family_gguf
from tests.fixtures.tiny_models import TOKENS, write_hf

NEMO_WRITTEN = Path(__file__).resolve().parents[1] / "fixtures" / "nemo-written"
TRTLLM_FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "mixtral"]


def logits(path: Path) -> torch.Tensor:
    """float32 logits of ``path`` on TOKENS (transformers, eager attention: Gemma's soft-capping applies)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.Tensor]]:
    """Each tiny family in HF format (transformers' own classes) and its logits; ``llama`` is tiny_models'."""
    root = tmp_path_factory.mktemp("families")
    paths = {family: write_family(family, root / family) for family in {*GGUF_ARCHS, *TRTLLM_FAMILIES} - {"llama"}}
    paths["llama"] = write_hf(root / "llama")
    return {family: (path, logits(path)) for family, path in paths.items()}


def assert_same_model(path: Path, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    diff = (logits(path) - expected).abs().max().item()
    print(f"{path.name}: max |logit diff| {diff:.3g} (logit std {expected.std():.3g})")
    assert diff <= tolerance and expected.std() > 100 * tolerance


@pytest.mark.parametrize("family", GGUF_ARCHS)
def test_gguf_converts_to_the_source_logits(family: str, sources, tmp_path: Path) -> None:
    path, expected = sources[family]
    gguf = inspect(write_family_gguf(family, path, tmp_path / f"{family}.gguf"))
    source = inspect(path)
    for key in ("architecture", "num_layers", "num_kv_heads", "head_dim", "num_experts", "experts_per_token",
                "sliding_window", "layer_types", "tie_word_embeddings"):
        assert getattr(gguf.arch, key) == getattr(source.arch, key), key
    assert_same_model(to_hf(gguf, tmp_path / "hf", "float32"), expected)


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "qwen3", "mixtral"])
def test_nemo_written_nemo2_exports_to_its_reference_logits(family: str, tmp_path: Path) -> None:
    """NeMo 2.7.3's own torch_dist files of four families; fp32 logits within 1e-2 of transformers' on the HF twin
    (they are exact: the weights are the twin's, bit for bit)."""
    root = NEMO_WRITTEN / family
    reference = torch.load(root / "logits.pt", weights_only=True)
    out = to_hf(inspect(root / "nemo2"), tmp_path / "hf", "float32")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        diff = (model(input_ids=reference["input_ids"]).logits - reference["logits"]).abs().max().item()
    print(f"{family} nemo2 -> HF: max |logit diff| {diff:.3g}")
    assert diff < 1e-2


def _hf_dir(state: dict[str, torch.Tensor], like: Path, out: Path) -> Path:
    """An HF directory of ``state`` with ``like``'s config and tokenizer."""
    shutil.copytree(like, out, ignore=shutil.ignore_patterns("*.safetensors*"))
    if json.loads((like / "config.json").read_text()).get("tie_word_embeddings"):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", TRTLLM_FAMILIES)
def test_trtllm_checkpoint_round_trips_to_the_source_logits(family: str, tp: int, sources, tmp_path: Path) -> None:
    path, expected = sources[family]
    checkpoint = inspect(path)
    fam = FAMILIES[checkpoint.arch.architecture]
    out = to_trtllm(checkpoint, tmp_path / "trtllm", dtype="float32", tp=tp)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == checkpoint.arch.architecture and config["mapping"]["tp_size"] == tp
    state = reassemble(out, fam.moe, fam.gemma)
    assert_same_model(_hf_dir(state, path, tmp_path / "back"), expected)


def _qnemo_rank0(qnemo: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with tarfile.open(qnemo) as tar:
        weights = load(tar.extractfile("./rank0.safetensors").read())
        config = json.load(io.BytesIO(tar.extractfile("./config.json").read()))
    return weights, config


@pytest.mark.parametrize("source", ["hf", "nemo2"])
@pytest.mark.parametrize("family", ["llama-gqa", "mixtral"])
def test_trtllm_checkpoint_equals_what_modelopt_wrote(family: str, source: str, tmp_path: Path) -> None:
    """ModelOpt 0.37 exported model.qnemo from the NeMo model: ours, from the HF twin or from that NeMo checkpoint,
    holds the same tensors bit for bit (Mixtral: float32 router, experts' fc = cat(w3, w1))."""
    expected, modelopt = _qnemo_rank0(NEMO_WRITTEN / family / "model.qnemo")
    out = to_trtllm(inspect(NEMO_WRITTEN / family / source), tmp_path / "ckpt", dtype="bfloat16")
    ours = load((out / "rank0.safetensors").read_bytes())
    assert ours.keys() == expected.keys()
    for name, tensor in expected.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_size", "intermediate_size",
                "vocab_size", "hidden_act", "rotary_base", "norm_epsilon"):
        assert config[key] == modelopt[key], key
    assert config.get("moe", {}).get("num_experts") == modelopt.get("moe", {}).get("num_experts")


def test_qwen3_moe_has_no_tensorrt_llm_checkpoint(sources, tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match=r"backend\.runtime: .*Qwen3MoeForCausalLM.*backend\.runtime=llmapi"):
        to_trtllm(inspect(sources["qwen3_moe"][0]), tmp_path / "ckpt")


@pytest.mark.parametrize("family", ["phi3", "granite"])
def test_hf_of_any_architecture_changes_dtype_by_byte_ranges(family: str, tmp_path: Path) -> None:
    """No family table for these: an HF export keeps names, files and config, and only changes the dtype."""
    from safetensors import safe_open

    source = write_family(family, tmp_path / family)
    same = to_hf(inspect(source), tmp_path / "same", "float32")
    assert (same / "model.safetensors").read_bytes()[8:] != b""
    with safe_open(source / "model.safetensors", "pt") as a, safe_open(same / "model.safetensors", "pt") as b:
        assert list(a.keys()) == list(b.keys()) and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
    half = to_hf(inspect(source), tmp_path / "bf16", "bfloat16")
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(half / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert (half / "tokenizer.json").is_file()
    diff = (logits(half) - logits(source)).abs().max().item()
    assert 0 < diff < 0.1
