"""Conversion benchmark: peak memory and throughput of ``to_hf`` on a ~1.5 GB Llama, next to a file copy.

Run: ``.venv/bin/python bench/convert_bench.py [--gb 1.5] [--dtype float32]``. Prints ratios; not a test.
Peak RSS is the converting subprocess's high-water mark minus that of an interpreter that only imports
torch (and the launcher), so it measures what the conversion itself holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = """
import torch, transformers, safetensors
from launcher.checkpoints import inspect
from launcher import cache
"""
CONVERT = IMPORTS + """
import sys, time
from pathlib import Path
start = time.perf_counter()
_, hit = cache.export_hf(inspect(Path(sys.argv[1])), Path(sys.argv[2]), sys.argv[3])
end = time.perf_counter()
print(end - start, hit, end)  # seconds converting (imports excluded), hit, when it finished
"""


def write_model(directory: Path, gb: float, dtype: str) -> int:
    """A random Llama of about ``gb`` GB of weights (HF layout, one tensor at a time); returns the largest tensor."""
    import torch

    from launcher.convert import ShardWriter, hf_names
    from launcher.spec import ModelArch
    from tests.fixtures.tiny_models import tiny_tokenizer

    torch_dtype = getattr(torch, dtype)
    hidden, ffn, vocab = 2048, 5632, 320
    per_layer = (4 * hidden * hidden + 3 * hidden * ffn) * torch_dtype.itemsize
    layers = max(1, round(gb * 1e9 / per_layer))
    arch = ModelArch(num_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_attention_heads=16,
                     num_kv_heads=16, head_dim=128, vocab_size=vocab, dtype=dtype)
    directory.mkdir(parents=True)
    shapes = {"embed_tokens": (vocab, hidden), "lm_head": (vocab, hidden), "norm": (hidden,), "layernorm": (hidden,),
              "gate_proj": (ffn, hidden), "up_proj": (ffn, hidden), "down_proj": (hidden, ffn)}
    largest = 0
    with ShardWriter(directory, max_shard_bytes=4 * 1024**3) as shards:
        for name in hf_names(arch):
            shape = next((s for key, s in shapes.items() if key in name), (hidden, hidden))
            tensor = torch.empty(shape, dtype=torch_dtype).normal_(0, 0.02)
            largest = max(largest, tensor.numel() * tensor.element_size())
            shards.add(name, tensor)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 16, "vocab_size": vocab, "torch_dtype": dtype, "tie_word_embeddings": False}
    (directory / "config.json").write_text(json.dumps(config))
    tiny_tokenizer().save_pretrained(directory)
    return largest


def peak_rss_mb(code: str, *args: str) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; its peak RSS in MB and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN reports the largest child so far: run the smaller (baseline) child first
    return max(after, before) / 1024, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        largest = write_model(work / "src", args.gb, args.dtype)
        weights = sum(f.stat().st_size for f in (work / "src").glob("*.safetensors"))

        baseline_mb, _ = peak_rss_mb(IMPORTS)
        os.sync()  # both timings include flushing their output, so dirty-page writeback is not a coin toss
        start = time.perf_counter()
        for f in (work / "src").glob("*.safetensors"):
            shutil.copyfile(f, work / f"copy-{f.name}")
        os.sync()
        copy_s = time.perf_counter() - start
        convert_mb, out = peak_rss_mb(CONVERT, str(work / "src"), str(work / "cache" / "entry"), args.dtype)
        os.sync()
        convert_s = float(out.split()[0]) + time.perf_counter() - float(out.split()[2])  # + the sync
        _, out = peak_rss_mb(CONVERT, str(work / "src"), str(work / "cache" / "entry"), args.dtype)
        hit_s, hit = float(out.split()[0]), out.split()[1]

    extra_mb = convert_mb - baseline_mb
    print(f"weights: {weights / 1e9:.2f} GB ({args.dtype}), largest tensor {largest / 1e6:.0f} MB")
    print(f"copy:    {copy_s:.2f} s ({weights / copy_s / 1e9:.2f} GB/s)")
    print(f"convert: {convert_s:.2f} s ({weights / convert_s / 1e9:.2f} GB/s) -> {copy_s / convert_s:.2f}x copy "
          f"(aim >= 0.8x)")
    print(f"peak RSS: convert {convert_mb:.0f} MB, torch-only interpreter {baseline_mb:.0f} MB, "
          f"difference {extra_mb:.0f} MB = largest tensor + {extra_mb - largest / 1e6:.0f} MB (aim < +512 MB)")
    print(f"cache hit: {hit_s * 1000:.1f} ms (hit={hit}), {convert_s / hit_s:.0f}x faster than the first run")


if __name__ == "__main__":
    main()
