"""The TensorRT-LLM checkpoint writer on a tiny Llama: names, shapes and config.json of formats.md B,
and the shards re-assemble into the HF weights exactly (TP 1, 2, 4 with KV heads < TP, and PP 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.checkpoints import inspect
from launcher.convert.trtllm_writer import pad_vocab, pipeline_stages, to_trtllm, write_trtllm
from launcher.errors import LauncherError
from tests.fixtures import tiny_models as tiny
from tests.fixtures.tiny_models import tiny_state_dict, write_hf

H, NH, NKV, HD, FFN, V, L = tiny.HIDDEN, tiny.HEADS, tiny.KV_HEADS, tiny.HEAD_DIM, tiny.FFN, tiny.VOCAB, tiny.LAYERS


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    return inspect(write_hf(tmp_path_factory.mktemp("hf") / "tiny"))


def reassemble(out: Path, tp: int, pp: int, vocab: int = V) -> dict[str, torch.Tensor]:
    """HF-named weights rebuilt from ``rank{r}.safetensors`` (the writer's inverse, written independently)."""
    ranks = [load_file(out / f"rank{r}.safetensors") for r in range(tp * pp)]
    stage = [[ranks[s * tp + t] for t in range(tp)] for s in range(pp)]
    kv_rows = max(NKV, tp) * HD // tp  # k (and v) rows on each rank, KV heads repeated when fewer than tp
    hf = {"model.embed_tokens.weight": stage[0][0]["transformer.vocab_embedding.weight"],
          "model.norm.weight": stage[-1][0]["transformer.ln_f.weight"],
          "lm_head.weight": torch.cat([r["lm_head.weight"] for r in stage[-1]])[:vocab]}
    for s, layers in enumerate(pipeline_stages(L, pp)):
        for local, layer in enumerate(layers):
            t, p = f"transformer.layers.{local}.", f"model.layers.{layer}."
            shards = stage[s]
            qkv = [r[t + "attention.qkv.weight"] for r in shards]
            q = torch.cat([x[: NH * HD // tp] for x in qkv])
            k, v = (torch.cat([x[NH * HD // tp + i * kv_rows: NH * HD // tp + (i + 1) * kv_rows] for x in qkv])
                    for i in (0, 1))
            repeat = max(1, tp // NKV)
            k, v = (x.reshape(-1, repeat, HD, H)[:, 0].reshape(-1, H) for x in (k, v))
            hf |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                   p + "self_attn.o_proj.weight": torch.cat([r[t + "attention.dense.weight"] for r in shards], 1),
                   p + "mlp.gate_proj.weight": torch.cat([r[t + "mlp.fc.weight"] for r in shards]),
                   p + "mlp.up_proj.weight": torch.cat([r[t + "mlp.gate.weight"] for r in shards]),
                   p + "mlp.down_proj.weight": torch.cat([r[t + "mlp.proj.weight"] for r in shards], 1),
                   p + "input_layernorm.weight": shards[0][t + "input_layernorm.weight"],
                   p + "post_attention_layernorm.weight": shards[0][t + "post_layernorm.weight"]}
            for r in shards:  # replicated tensors are the same on every rank
                assert torch.equal(r[t + "input_layernorm.weight"], hf[p + "input_layernorm.weight"])
    return hf


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (4, 1), (2, 2)], ids=["tp1", "tp2", "tp4-kv2", "tp2-pp2"])
def test_shards_reassemble_to_the_hf_weights(tiny_checkpoint, tmp_path: Path, tp: int, pp: int) -> None:
    out = to_trtllm(tiny_checkpoint, tmp_path / "ckpt", tp=tp, pp=pp)
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", *(f"rank{r}.safetensors"
                                                                              for r in range(tp * pp))])
    rebuilt = reassemble(out, tp, pp)
    state = tiny_state_dict()
    assert rebuilt.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(rebuilt[name], tensor), name


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (4, 1), (2, 2)])
def test_names_and_shapes_per_rank(tiny_checkpoint, tmp_path: Path, tp: int, pp: int) -> None:
    out = to_trtllm(tiny_checkpoint, tmp_path / "ckpt", tp=tp, pp=pp)
    kv = max(NKV, tp)
    for r in range(tp * pp):
        stage = r // tp
        local_layers = len(pipeline_stages(L, pp)[stage])
        shapes = {k: tuple(v.shape) for k, v in load_file(out / f"rank{r}.safetensors").items()}
        expected = {}
        for i in range(local_layers):
            t = f"transformer.layers.{i}."
            expected |= {t + "input_layernorm.weight": (H,), t + "post_layernorm.weight": (H,),
                         t + "attention.qkv.weight": ((NH + 2 * kv) * HD // tp, H),
                         t + "attention.dense.weight": (H, NH * HD // tp),
                         t + "mlp.fc.weight": (FFN // tp, H), t + "mlp.gate.weight": (FFN // tp, H),
                         t + "mlp.proj.weight": (H, FFN // tp)}
        if stage == 0:
            expected["transformer.vocab_embedding.weight"] = (V, H)
        if stage == pp - 1:
            expected |= {"transformer.ln_f.weight": (H,), "lm_head.weight": (pad_vocab(V, tp) // tp, H)}
        assert shapes == expected, r


def test_tp1_matches_the_qnemo_layout(tiny_checkpoint, tmp_path: Path) -> None:
    """The .qnemo fixture writes TensorRT-LLM names independently (plain-concat QKV, fc = gate_proj)."""
    ours = load_file(to_trtllm(tiny_checkpoint, tmp_path / "ckpt") / "rank0.safetensors")
    reference = tiny.to_trtllm(tiny_state_dict(), tie=False)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_config_json(tiny_checkpoint, tmp_path: Path) -> None:
    config = json.loads((to_trtllm(tiny_checkpoint, tmp_path / "ckpt", dtype="bfloat16", tp=2, pp=2,
                                   kv_cache="fp8") / "config.json").read_text())
    assert config["architecture"] == "LlamaForCausalLM" and config["dtype"] == "bfloat16"
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_size"], config["intermediate_size"],
            config["vocab_size"]) == (H, L, NH, NKV, HD, FFN, V)
    assert config["position_embedding_type"] == "rope_gpt_neox" and config["hidden_act"] == "silu"
    assert config["logits_dtype"] == "float32" and config["rotary_base"] == 10000.0
    mapping = {k: config["mapping"][k] for k in ("world_size", "tp_size", "pp_size", "cp_size")}
    assert mapping == {"world_size": 4, "tp_size": 2, "pp_size": 2, "cp_size": 1}
    assert config["quantization"]["quant_algo"] is None
    assert config["quantization"]["kv_cache_quant_algo"] == "FP8"
    ranks = [load_file(tmp_path / "ckpt" / f"rank{r}.safetensors") for r in range(4)]
    assert all(torch.equal(r["transformer.layers.0.attention.kv_cache_scaling_factor"], torch.ones(1)) for r in ranks)
    assert ranks[0]["transformer.layers.0.attention.qkv.weight"].dtype == torch.bfloat16


def test_vocab_is_padded_for_tensor_parallel(tmp_path: Path) -> None:
    arch = inspect(write_hf(tmp_path / "hf")).arch
    arch.vocab_size = 322  # not a multiple of tp=4: lm_head gets 2 zero rows
    state = dict(tiny_state_dict())
    extra = torch.randn(2, H)
    state["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"], extra])
    state["lm_head.weight"] = torch.cat([state["lm_head.weight"], extra])
    out = write_trtllm(state.items(), arch, tmp_path / "ckpt", dtype="float32", tp=4)
    heads = [load_file(out / f"rank{r}.safetensors")["lm_head.weight"] for r in range(4)]
    assert [h.shape[0] for h in heads] == [81] * 4
    full = torch.cat(heads)
    assert torch.equal(full[:322], state["lm_head.weight"]) and not full[322:].any()
    assert torch.equal(reassemble(out, 4, 1, vocab=322)["lm_head.weight"], state["lm_head.weight"])


def test_fp8_weights_and_scales(tmp_path: Path) -> None:
    """FP8 q/k/v with different scales fuse into one qkv at the largest scale; scales get TensorRT-LLM names."""
    arch = inspect(write_hf(tmp_path / "hf")).arch
    stream = []
    for name, tensor in tiny_state_dict().items():
        if name.endswith("proj.weight"):
            scale = tensor.abs().max() / 448
            stream += [(name, (tensor / scale).to(torch.float8_e4m3fn)), (name + "_scale", scale.reshape(())),
                       (name.replace(".weight", ".input_scale"), torch.tensor(0.5))]
        else:
            stream.append((name, tensor))
    out = write_trtllm(stream, arch, tmp_path / "ckpt", dtype="float32", tp=2, quantization={"quant_algo": "FP8"})
    rank = load_file(out / "rank1.safetensors")
    p, t = "model.layers.1.", "transformer.layers.1."
    qkv, common = rank[t + "attention.qkv.weight"], rank[t + "attention.qkv.weights_scaling_factor"]
    assert qkv.dtype == torch.float8_e4m3fn and common.shape == (1,)
    scales = {x: dict(stream)[f"{p}self_attn.{x}_proj.weight_scale"] for x in "qkv"}
    assert torch.isclose(common[0], max(scales.values()))
    dequantized = qkv.float() * common
    q_rows = NH * HD // 2
    original_q = dict(stream)[p + "self_attn.q_proj.weight"].float() * scales["q"]
    assert torch.allclose(dequantized[:q_rows], original_q[q_rows:], rtol=0.13, atol=common.item())
    assert rank[t + "attention.qkv.activation_scaling_factor"].item() == 0.5
    assert rank[t + "mlp.fc.weight"].dtype == torch.float8_e4m3fn
    assert torch.isclose(rank[t + "mlp.fc.weights_scaling_factor"][0], scales_of(stream, p + "mlp.gate_proj"))
    assert json.loads((out / "config.json").read_text())["quantization"]["quant_algo"] == "FP8"


def scales_of(stream: list, module: str) -> torch.Tensor:
    return dict(stream)[module + ".weight_scale"]


def test_kv_heads_that_do_not_repeat_evenly_are_refused(tiny_checkpoint, tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match=r"backend\.tensor_parallel: 2 KV heads"):
        to_trtllm(tiny_checkpoint, tmp_path / "ckpt", tp=3)


def test_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    arch = inspect(write_hf(tmp_path / "hf")).arch
    stream = [(k, v) for k, v in tiny_state_dict().items() if k != "model.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(LauncherError, match=r"model\.layers\.1\.self_attn"):
        write_trtllm(stream, arch, tmp_path / "ckpt", dtype="float32")
