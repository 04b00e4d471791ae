"""Conversion benchmark: an HF export through the export cache (``launcher.cache.fill`` + ``launcher.convert.to_hf``)
next to a plain file copy of the same weights, with a warm and a cold page cache; peak memory; a cache hit.

Run: ``.venv/bin/python bench/convert_bench.py [--gb 1.5] [--dtype float32] [--cold]``. Prints ratios; not a test.

- same dtype: the export keeps float32 (tensors are copied by byte range, ``copy_file_range``); aim >= 0.8x copy.
- cast: float32 -> bfloat16 (chunks through reader -> cast -> writer threads); aim >= 0.5x copy.
- copy: ``shutil.copyfile`` (``sendfile`` on Linux) of every weight file. Every timing ends with ``os.sync()``, so
  writing back dirty pages is inside it, for the copy and the export alike; the export is timed inside its own
  process, from ``cache.fill`` to that sync (its interpreter's start and exit are not in it).
- cold (``--cold``, root only): ``echo 3 > /proc/sys/vm/drop_caches`` before each timed run, so the weights come
  from the disk; otherwise the weights were just written and are in the page cache (warm).
- peak RSS: the exporting subprocess's high-water mark minus that of an interpreter that only imports torch and
  the launcher, next to the largest tensor (aim: at most largest tensor + 512 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = """
import resource
import torch, transformers, safetensors
from launcher.checkpoints import inspect
from launcher import cache
from launcher.convert import to_hf
"""
BASELINE = IMPORTS + "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
EXPORT = IMPORTS + """
import os, sys, time
from pathlib import Path
start = time.perf_counter()
hit = cache.fill(Path(sys.argv[2]), lambda tmp: to_hf(inspect(Path(sys.argv[1])), tmp, sys.argv[3]))
os.sync()
seconds = time.perf_counter() - start
print(seconds, hit, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # imports and exit excluded, sync included
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


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run(code: str, *args: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the fields of its last line (each child prints its own peak RSS)."""
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.split("\n")[-2].split()


def timed_copy(source: Path, target: Path, cold: bool) -> float:
    target.mkdir()
    os.sync()  # every timed run starts with no dirty pages of an earlier one
    if cold:
        drop_caches()
    start = time.perf_counter()
    for f in source.glob("*.safetensors"):
        shutil.copyfile(f, target / f.name)
    os.sync()
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def timed_export(source: Path, entry: Path, dtype: str, cold: bool) -> tuple[float, float, str]:
    """Seconds the export took in its process (from ``cache.fill`` to after ``os.sync()``), its peak RSS in MB,
    and 'True' on a cache hit."""
    os.sync()
    if cold:
        drop_caches()
    seconds, hit, peak_kb = run(EXPORT, str(source), str(entry), dtype)
    return float(seconds), int(peak_kb) / 1024, hit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cast", default="bfloat16")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each timed run (root)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the copy and the exports; print each run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(dir=ROOT.parent if os.access(ROOT.parent, os.W_OK) else None) as tmp:
        work = Path(tmp)
        largest = write_model(work / "src", args.gb, args.dtype)
        weights = sum(f.stat().st_size for f in (work / "src").glob("*.safetensors"))
        baseline_mb = int(run(BASELINE)[0]) / 1024
        state = "cold page cache" if args.cold else "warm page cache"
        print(f"weights: {weights / 1e9:.2f} GB ({args.dtype}), largest tensor {largest / 1e6:.0f} MB; {state}")
        ratios: dict[str, list[float]] = {}
        for number in range(1, args.runs + 1):
            for name, ratio in measure(work, weights, largest, baseline_mb, args,
                                       f"run {number}: " if args.runs > 1 else "").items():
                ratios.setdefault(name, []).append(ratio)
        if args.runs > 1:  # each export against the copy timed just before it: the disk is shared, and noisy
            print("median over runs: " + ", ".join(f"{name} {statistics.median(r):.2f}x copy (min {min(r):.2f}x, "
                                                    f"max {max(r):.2f}x)" for name, r in ratios.items()))


def measure(work: Path, weights: int, largest: int, baseline_mb: float, args: argparse.Namespace,
            label: str) -> dict[str, float]:
    """A copy before each export, side by side; each export's speed as a multiple of its copy's."""
    ratios = {}
    for name, dtype, aim in (("same dtype", args.dtype, 0.8), (f"cast to {args.cast}", args.cast, 0.5)):
        copy_s = timed_copy(work / "src", work / "copy", args.cold)
        print(f"{label}copy: {copy_s:.2f} s ({weights / copy_s / 1e9:.2f} GB/s)")
        entry = work / "cache" / dtype
        seconds, mb, _ = timed_export(work / "src", entry, dtype, args.cold)
        ratios[name] = copy_s / seconds
        extra = mb - baseline_mb
        print(f"{label}export {name}: {seconds:.2f} s ({weights / seconds / 1e9:.2f} GB/s read) -> "
              f"{copy_s / seconds:.2f}x copy (aim >= {aim}x); peak RSS {mb:.0f} MB, {extra:.0f} MB above the "
              f"torch-only interpreter = largest tensor {extra - largest / 1e6:+.0f} MB (aim <= +512 MB)")
        hit_s, _, hit = timed_export(work / "src", entry, dtype, False)
        print(f"   cache hit: {hit_s * 1000:.1f} ms (hit={hit})")
        shutil.rmtree(entry)
    return ratios


if __name__ == "__main__":
    main()
