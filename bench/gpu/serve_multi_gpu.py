"""On one two-GPU host, in one run: the ~1.1B random Llama served by ``llm-launch`` on one GPU vs two.

Each configuration is the same deployment (pytorch backend, bf16, ``backend.compile=true``) except the
``hardware`` entry: ``h100x1`` renders one model instance on GPU 0, ``h100x2`` one instance on each GPU
(``instance_group [{ kind: KIND_GPU gpus: [0, 1] }]``). Each gets the same load, LOAD concurrent requests x
NEW_TOKENS new tokens (greedy, ``ignore_eos``), two ways: as a burst (all requests sent at once, timed
REPEATS times) and sustained (LOAD clients each sending its next request as soon as the last one returned,
for SUSTAIN_S seconds), while ``nvidia-smi`` samples every GPU's utilisation and memory. Run on the GPU host
from the repository root (bench/gpu/README.md has the command):

    python bench/gpu/serve_multi_gpu.py --out results.json [--wheel-dir .device-carry/whl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_gpu import (
    MODEL_DIR,
    NEW_TOKENS,
    PORTS,
    build_model,
    concurrent,
    hardware_entry,
    prompt_text,
    request,
    run_clients,
    serving,
)

LOAD, REPEATS, SUSTAIN_S = 32, 5, 10.0
CONFIGS = {  # name -> (GPUs, backend.max_batch_size)
    "1gpu": (1, 16),
    "2gpu": (2, 16),
    "1gpu-batch32": (1, 32),  # one GPU allowed the whole load in one batch
}
INSTANCE_LINE = re.compile(r"TRITONBACKEND_ModelInstanceInitialize: (\S+) \(GPU device (\d+)\)")


class GpuSampler:
    """``nvidia-smi`` every 100 ms in the background: per-GPU mean utilisation and peak memory."""

    def __enter__(self) -> GpuSampler:
        self.samples: list[tuple[int, float, float]] = []
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        return self

    def read(self) -> None:
        for line in self.process.stdout:
            index, utilisation, memory = (field.strip() for field in line.split(","))
            self.samples.append((int(index), float(utilisation), float(memory) / 1024))

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait()
        self.reader.join(timeout=5)

    def summary(self) -> dict[int, dict[str, float]]:
        gpus = sorted({index for index, _, _ in self.samples})
        return {gpu: {"utilisation_mean_pct": statistics.mean(u for i, u, _ in self.samples if i == gpu),
                      "memory_peak_gib": max(m for i, _, m in self.samples if i == gpu),
                      "samples": sum(1 for i, _, _ in self.samples if i == gpu)} for gpu in gpus}


def sustained(url: str, prompt: str, clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients for ``seconds`` (no request starts later): new tokens / wall time."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def loop(client) -> None:
        while time.perf_counter() < deadline:
            latencies.append(request(client, prompt, NEW_TOKENS))

    wall = run_clients(url, clients, loop)
    return {"requests": len(latencies), "wall_s": wall, "tokens_per_s": len(latencies) * NEW_TOKENS / wall,
            "latency_p50_s": statistics.median(latencies), "latency_max_s": max(latencies)}


def measure(name: str, wheel_dir: str | None, log_dir: Path) -> dict:
    gpus, max_batch_size = CONFIGS[name]
    output_dir = Path(f"/tmp/deploy-{name}")
    overrides = ["backend.compile=true", f"backend.max_batch_size={max_batch_size}", f"output_dir={output_dir}"]
    with serving(hardware_entry(gpus), overrides, wheel_dir, log_dir / f"{name}.log") as times:
        url, prompt = f"127.0.0.1:{PORTS['grpc_port']}", prompt_text()
        concurrent(url, prompt, LOAD, NEW_TOKENS)  # warm-up under the measured load
        with GpuSampler() as burst_gpus:
            walls = [concurrent(url, prompt, LOAD, NEW_TOKENS) for _ in range(REPEATS)]
        with GpuSampler() as sustained_gpus:
            steady = sustained(url, prompt, LOAD, SUSTAIN_S)
        instances = INSTANCE_LINE.findall((output_dir / "server.log").read_text())
        return {**times, "hardware": hardware_entry(gpus), "max_batch_size": max_batch_size,
                "instances": [f"{instance} on GPU {device}" for instance, device in instances],
                "burst": {"wall_s": walls, "tokens_per_s": LOAD * NEW_TOKENS / statistics.median(walls),
                          "gpus": burst_gpus.summary()},
                "sustained": {**steady, "gpus": sustained_gpus.summary()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheel-dir")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    report: dict = {"gpu": torch.cuda.get_device_name(), "gpu_count": torch.cuda.device_count(),
                    "torch": torch.__version__, "load": LOAD, "new_tokens": NEW_TOKENS, "repeats": REPEATS,
                    "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE")}
    report["parameters"] = build_model() if not (MODEL_DIR / "config.json").exists() else None
    torch.cuda.empty_cache()
    for name in args.configs.split(","):
        start = time.perf_counter()
        try:
            report[name] = measure(name, args.wheel_dir, args.out.parent)
        except Exception as err:  # keep the other configurations' numbers
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report[name]["phase_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps(report, indent=2))
        print(name, json.dumps(report[name]), flush=True)
    one, two = report.get("1gpu", {}), report.get("2gpu", {})
    for mode in ("burst", "sustained"):
        if mode in one and mode in two:
            rate_1, rate_2 = one[mode]["tokens_per_s"], two[mode]["tokens_per_s"]
            print(f"{mode}, {LOAD} concurrent x {NEW_TOKENS} tokens: 2 GPUs / 1 GPU = "
                  f"{rate_2:.0f} / {rate_1:.0f} tokens/s = {rate_2 / rate_1:.2f}x")
    os.sync()


if __name__ == "__main__":
    main()
