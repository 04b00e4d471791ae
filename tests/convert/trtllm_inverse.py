"""TensorRT-LLM checkpoint -> HF weights, written for the tests independently of the writer: each rank's
``rank{r}.safetensors`` (TP only) put back together by the layout of formats.md B and TensorRT-LLM's converters
(``cat(q, k, v)`` per rank with repeated KV heads, ``fc`` = gate, ``gate`` = up, Gemma norms ``1 + w``, MoE
``fc`` = ``[experts, up + gate, hidden]``), so a round trip can be logits-checked with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def reassemble(out: Path, family_moe: str | None = None, gemma: bool = False) -> dict[str, torch.Tensor]:
    config = json.loads((out / "config.json").read_text())
    tp = config["mapping"]["tp_size"]
    heads, kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_size"]
    ranks = [load_file(out / f"rank{r}.safetensors") for r in range(tp)]
    q_rows, kv_rows = heads * head_dim // tp, max(kv, tp) * head_dim // tp
    repeat = max(1, tp // kv)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return t - 1 if gemma else t

    def cat(name: str, dim: int) -> torch.Tensor:
        return torch.cat([r[name] for r in ranks], dim)

    vocab = config["vocab_size"]
    hf = {"model.embed_tokens.weight": ranks[0]["transformer.vocab_embedding.weight"],
          "model.norm.weight": norm(ranks[0]["transformer.ln_f.weight"]),
          "lm_head.weight": cat("lm_head.weight", 0)[:vocab]}
    for layer in range(config["num_hidden_layers"]):
        t, p = f"transformer.layers.{layer}.", f"model.layers.{layer}."
        for leaf in ("weight", "bias"):
            fused = [r.get(f"{t}attention.qkv.{leaf}") for r in ranks]
            if fused[0] is None:
                continue
            q = torch.cat([x[:q_rows] for x in fused])
            k, v = (torch.cat([x[q_rows + i * kv_rows: q_rows + (i + 1) * kv_rows] for x in fused]) for i in (0, 1))
            k, v = (x.reshape(-1, repeat, head_dim, *x.shape[1:])[:, 0].reshape(-1, *x.shape[1:]) for x in (k, v))
            hf |= {f"{p}self_attn.q_proj.{leaf}": q, f"{p}self_attn.k_proj.{leaf}": k, f"{p}self_attn.v_proj.{leaf}": v}
        hf[p + "self_attn.o_proj.weight"] = cat(t + "attention.dense.weight", 1)
        names = {"input_layernorm": "input_layernorm", "post_layernorm": "post_attention_layernorm",
                 "pre_feedforward_layernorm": "pre_feedforward_layernorm",
                 "post_feedforward_layernorm": "post_feedforward_layernorm",
                 "attention.q_layernorm": "self_attn.q_norm", "attention.k_layernorm": "self_attn.k_norm"}
        for trt, name in names.items():
            if f"{t}{trt}.weight" in ranks[0]:
                hf[f"{p}{name}.weight"] = norm(ranks[0][f"{t}{trt}.weight"])
        if family_moe is None:
            hf[p + "mlp.gate_proj.weight"] = cat(t + "mlp.fc.weight", 0)
            hf[p + "mlp.up_proj.weight"] = cat(t + "mlp.gate.weight", 0)
            hf[p + "mlp.down_proj.weight"] = cat(t + "mlp.proj.weight", 1)
            continue
        hf[p + "block_sparse_moe.gate.weight"] = ranks[0][t + "mlp.router.weight"]
        halves = [r[t + "mlp.fc.weight"].chunk(2, dim=1) for r in ranks]  # per rank: [E, up, H], [E, gate, H]
        up, gate = (torch.cat([h[i] for h in halves], dim=1) for i in (0, 1))
        down = cat(t + "mlp.proj.weight", 2)
        for e in range(up.shape[0]):
            x = f"{p}block_sparse_moe.experts.{e}."
            hf |= {x + "w1.weight": gate[e], x + "w3.weight": up[e], x + "w2.weight": down[e]}
    return hf
