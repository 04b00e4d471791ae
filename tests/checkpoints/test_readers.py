from pathlib import Path

import pytest
import torch

from launcher.checkpoints import inspect
from launcher.checkpoints.gguf import unpermute
from launcher.checkpoints.megatron import split_qkv
from launcher.convert import hf_names, save_tokenizer
from tests.checkpoints.formats import FORMATS, source_kwargs
from tests.fixtures import tiny_models as tiny

LOSSY = {"gguf-q8_0"}


@pytest.mark.parametrize("case", FORMATS)
def test_architecture_matches_the_source_model(case: str, tmp_path: Path) -> None:
    checkpoint = inspect(FORMATS[case][1](tmp_path))
    arch, source = checkpoint.arch, source_kwargs(case)
    assert checkpoint.format == FORMATS[case][0]
    assert (arch.architecture, arch.tie_word_embeddings) == (source["arch"], source["tie"])
    assert (arch.num_layers, arch.hidden_size, arch.intermediate_size) == (tiny.LAYERS, tiny.HIDDEN, tiny.FFN)
    assert (arch.num_attention_heads, arch.num_kv_heads, arch.head_dim) == (tiny.HEADS, tiny.KV_HEADS, tiny.HEAD_DIM)
    assert arch.vocab_size == tiny.VOCAB  # NeMo pads rows to 512; the real size comes from the tokenizer
    assert arch.dtype == {"gguf": "bfloat16", "qnemo": "bfloat16"}.get(checkpoint.format, "float32")
    assert checkpoint.tokenizer is not None and checkpoint.tokenizer.exists()


@pytest.mark.parametrize("case", [c for c in FORMATS if not c.startswith("qnemo")])
def test_stream_yields_the_source_tensors_under_hf_names(case: str, tmp_path: Path) -> None:
    checkpoint = inspect(FORMATS[case][1](tmp_path))
    source = tiny.tiny_state_dict(**source_kwargs(case))
    seen = {}
    for name, tensor in checkpoint.tensors():
        seen[name] = tensor
        tolerance = 0.01 if case in LOSSY else 0.0
        assert torch.allclose(tensor.float(), source[name], atol=tolerance, rtol=0), name
    assert sorted(seen) == sorted(hf_names(checkpoint.arch))


def test_qnemo_keeps_tensorrt_llm_names_and_its_quantization(tmp_path: Path) -> None:
    checkpoint = inspect(tiny.write_qnemo(tmp_path / "q.qnemo", quant_algo="FP8"))
    assert checkpoint.quantization == {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    assert checkpoint.mapping == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    expected = tiny.to_trtllm(tiny.tiny_state_dict(), tie=False)
    tensors = dict(checkpoint.tensors())
    assert sorted(tensors) == sorted(expected)
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[name].to(torch.bfloat16)), name


def test_gguf_unpermute_inverts_llama_cpp_permute() -> None:
    weight = torch.randn(tiny.KV_HEADS * tiny.HEAD_DIM, tiny.HIDDEN)
    permuted = tiny.llama_cpp_permute(weight, tiny.KV_HEADS)
    assert not torch.equal(permuted, weight)
    assert torch.equal(unpermute(permuted, tiny.KV_HEADS), weight)


def test_split_qkv_inverts_megatron_interleave() -> None:
    state = tiny.tiny_state_dict()
    megatron = tiny.to_megatron(state, tie=False, vocab_rows=512)
    from launcher.spec import ModelArch

    arch = ModelArch(num_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_kv_heads=2,
                     head_dim=32, vocab_size=320)
    q, k, v = split_qkv(megatron["decoder.layers.1.self_attention.linear_qkv.weight"], arch)
    for name, tensor in zip("qkv", (q, k, v), strict=True):
        assert torch.equal(tensor, state[f"model.layers.1.self_attn.{name}_proj.weight"])


@pytest.mark.parametrize("case", ["gguf", "nemo-legacy", "nemo2", "qnemo"])
def test_tokenizer_round_trips_to_hf_files(case: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    checkpoint = inspect(FORMATS[case][1](tmp_path))
    ids = save_tokenizer(checkpoint.tokenizer, tmp_path / "tok")
    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "Paris is the capital of France."
    if case == "nemo-legacy":  # a sentencepiece model: compare with sentencepiece itself
        import sentencepiece

        expected = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint.tokenizer)).encode(text)
    else:
        expected = tiny.tiny_tokenizer()(text).input_ids
    assert saved(text, add_special_tokens=False).input_ids == expected
    assert (ids["bos_token_id"], ids["eos_token_id"]) == (1, 2)
    assert len(saved) == tiny.VOCAB


NEMO_WRITTEN = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "nemo-written" / "llama-gqa"


@pytest.mark.skipif(not NEMO_WRITTEN.is_dir(), reason="the shared NeMo-written fixture is not on this machine")
def test_nemo_written_nemo2_streams_the_hf_weights_bit_for_bit() -> None:
    """NeMo 2.7.3's own torch_dist files (bytes items with no offset included) give the HF model's tensors."""
    from safetensors.torch import load_file

    checkpoint = inspect(NEMO_WRITTEN / "nemo2")
    expected = load_file(NEMO_WRITTEN / "hf" / "model.safetensors")
    tensors = dict(checkpoint.tensors())
    assert sorted(tensors) == sorted(expected)
    for name, tensor in tensors.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
