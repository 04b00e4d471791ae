"""On one GPU, in one run: a ~1.1B random Llama served through Triton by ``llm-launch`` vs called directly.

Measures tokens/s and time to first token for 1 and 16 concurrent requests x 128 new tokens (greedy,
``ignore_eos``), eager and with ``backend.compile=true`` (static KV cache + torch.compile/CUDA graphs),
the start-to-ready time, GPU memory, and batch-1 decode speed as a fraction of the memory-bandwidth bound.
Run on the GPU host from the repository root (see bench/gpu/README.md for the exact device command):

    python bench/gpu/serve_gpu.py --out results.json [--wheel-dir .device-carry/whl]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.tiny_models import tiny_tokenizer

MODEL_DIR = Path("/tmp/llama-1b")
PROMPT_TOKENS, NEW_TOKENS, CONCURRENCY = 128, 128, 16
MAX_INPUT_LEN, MAX_OUTPUT_LEN = 256, 256  # model.max_input_len / max_output_len of the served deployment
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}  # SXM datasheet bandwidth
PORTS = {"http_port": 18000, "grpc_port": 18001, "metrics_port": 18002}


def build_model() -> int:
    """A TinyLlama-shaped random Llama in bf16 plus the offline test tokenizer; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                         rope_theta=10000.0, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(MODEL_DIR)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(MODEL_DIR)
    return sum(p.numel() for p in model.parameters())


def prompt_text() -> str:
    """Text of exactly PROMPT_TOKENS tokens for the test tokenizer (checked)."""
    tokenizer = tiny_tokenizer()
    words = ("Paris is the capital of France and Berlin is the capital of Germany " * 40).split()
    for n in range(1, len(words)):
        text = " ".join(words[:n])
        if len(tokenizer(text)["input_ids"]) >= PROMPT_TOKENS:
            return text
    raise AssertionError("prompt too short")


def timed_generate(model, input_ids: torch.Tensor, new_tokens: int, cache=None) -> float:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        if cache is not None:
            cache.reset()
        model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                       **({"past_key_values": cache} if cache is not None else {}))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def direct(compile_: bool) -> dict:
    """The same model and generate settings in this process (no server)."""
    from transformers import AutoModelForCausalLM, StaticCache

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.bfloat16).to("cuda").eval()
    ids = torch.tensor([tiny_tokenizer()(prompt_text())["input_ids"][:PROMPT_TOKENS]], device="cuda")
    results = {}
    for batch in (1, CONCURRENCY):
        batch_ids = ids.repeat(batch, 1)
        cache = None
        if compile_:
            with torch.inference_mode():
                cache = StaticCache(config=model.config, max_cache_len=MAX_INPUT_LEN + MAX_OUTPUT_LEN)  # as served
        timed_generate(model, batch_ids, 8, cache)  # warm-up (compiles the decode step when static)
        timed_generate(model, batch_ids, NEW_TOKENS, cache)
        ttft = statistics.median(timed_generate(model, batch_ids, 1, cache) for _ in range(3))
        total = statistics.median(timed_generate(model, batch_ids, NEW_TOKENS, cache) for _ in range(3))
        results[batch] = {"tokens_per_s": batch * NEW_TOKENS / total, "ttft_s": ttft,
                          "decode_tokens_per_s_per_seq": (NEW_TOKENS - 1) / (total - ttft)}
    del model
    torch.cuda.empty_cache()
    return results


def request(client, prompt: str, max_tokens: int) -> float:
    """One request in the vLLM-backend layout (shape-[1] tensors, ``sampling_parameters`` JSON) over the
    decoupled model's gRPC stream; seconds until its final response."""
    import tritonclient.grpc as grpcclient

    def tensor(name: str, value, dtype: str):
        item = grpcclient.InferInput(name, [1], dtype)
        item.set_data_from_numpy(np.array([value], dtype=np.object_ if dtype == "BYTES" else dtype.lower()))
        return item

    sampling = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    inputs = [tensor("text_input", prompt.encode(), "BYTES"),
              tensor("sampling_parameters", json.dumps(sampling).encode(), "BYTES"),
              tensor("exclude_input_in_output", True, "BOOL"), tensor("return_num_output_tokens", True, "BOOL")]
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        start = time.perf_counter()
        client.async_stream_infer("llm", inputs, enable_empty_final_response=True)
        tokens = 0
        while True:
            result, error = responses.get(timeout=600)
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                tokens += int(result.as_numpy("num_output_tokens").reshape(-1)[0])
            if response.parameters["triton_final_response"].bool_param:
                break
        elapsed = time.perf_counter() - start
    finally:
        client.stop_stream()
    assert tokens == max_tokens, tokens
    return elapsed


def run_clients(url: str, clients: int, work: Callable) -> float:
    """Wall time for ``clients`` threads, each with its own connection, released at once to run ``work(client)``."""
    import tritonclient.grpc as grpcclient

    connections = [grpcclient.InferenceServerClient(url) for _ in range(clients)]
    barrier, errors = threading.Barrier(clients + 1), []

    def run(client) -> None:
        barrier.wait()
        try:
            work(client)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def concurrent(url: str, prompt: str, clients: int, max_tokens: int) -> float:
    """Wall time for ``clients`` simultaneous requests, each on its own connection."""
    return run_clients(url, clients, lambda client: request(client, prompt, max_tokens))


def hardware_entry(gpus: int = 1) -> str:
    return f"{'h200' if 'H200' in torch.cuda.get_device_name() else 'h100'}x{gpus}"


def gpu_memory_gib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split()[0]) / 1024


@contextmanager
def serving(hardware: str, overrides: list[str], wheel_dir: str | None, log: Path) -> Iterator[dict]:
    """``llm-launch ... action=serve`` for the random Llama on ``hardware``; yields once it prints ``serving``
    (with its start times), then stops it with SIGINT."""
    command = [sys.executable, "-m", "launcher.cli", "model=tiny-llama", f"model.checkpoint={MODEL_DIR}",
               "backend=pytorch", f"hardware={hardware}", "precision=bf16",
               f"model.max_input_len={MAX_INPUT_LEN}", f"model.max_output_len={MAX_OUTPUT_LEN}",
               "smoke.max_tokens=8", "action=serve", "server.start_timeout_s=900",
               *(f"server.{k}={v}" for k, v in PORTS.items()), *overrides]
    if wheel_dir:
        command.append(f"target.wheel_dir={wheel_dir}")
    started = time.perf_counter()
    with log.open("w") as out:
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        times: dict = {"server_ready_s": None}
        for line in launcher.stdout:
            out.write(line)
            out.flush()
            found = re.search(r"ready in ([0-9.]+) s", line)
            if found:
                times["server_ready_s"] = float(found.group(1))
            found = re.search(r"^latency ([0-9.]+) s", line)
            if found:  # the smoke query: the first request after ready
                times["smoke_latency_s"] = float(found.group(1))
            if line.startswith("serving"):
                times["launch_to_serving_s"] = time.perf_counter() - started
                break
        if "launch_to_serving_s" not in times:
            launcher.wait()
            raise RuntimeError(f"llm-launch did not reach serving; see {log}")
        try:
            yield times
        finally:
            launcher.send_signal(signal.SIGINT)
            rest, _ = launcher.communicate(timeout=120)
            out.write(rest)


def served(compile_: bool, wheel_dir: str | None, log: Path) -> dict:
    """The served model on one GPU, measured with gRPC clients at 1 and CONCURRENCY requests."""
    overrides = [f"backend.max_batch_size={CONCURRENCY}", f"backend.compile={str(compile_).lower()}",
                 f"output_dir=/tmp/deploy-{'compile' if compile_ else 'eager'}"]
    with serving(hardware_entry(), overrides, wheel_dir, log) as times:
        url = f"127.0.0.1:{PORTS['grpc_port']}"
        prompt = prompt_text()
        concurrent(url, prompt, CONCURRENCY, NEW_TOKENS)  # warm-up at full batch
        results: dict = {**times, "gpu_memory_gib": gpu_memory_gib()}
        for clients in (1, CONCURRENCY):
            ttft = statistics.median(concurrent(url, prompt, clients, 1) for _ in range(3))
            total = statistics.median(concurrent(url, prompt, clients, NEW_TOKENS) for _ in range(3))
            results[clients] = {"tokens_per_s": clients * NEW_TOKENS / total, "ttft_s": ttft,
                                "decode_tokens_per_s_per_seq": (NEW_TOKENS - 1) / (total - ttft)}
        return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wheel-dir")
    parser.add_argument("--phases", default="direct,served,direct-compile,served-compile")
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    params = build_model()
    weight_bytes = params * 2
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), 3.35e12)
    report: dict = {"gpu": name, "parameters": params, "weight_bytes": weight_bytes,
                    "bandwidth_bound_tokens_per_s": bandwidth / weight_bytes, "torch": torch.__version__}
    log_dir = args.out.parent
    for phase in args.phases.split(","):
        start = time.perf_counter()
        try:
            if phase.startswith("direct"):
                report[phase] = direct(compile_=phase.endswith("compile"))
            else:
                report[phase] = served(phase.endswith("compile"), args.wheel_dir, log_dir / f"{phase}.log")
        except Exception as err:  # keep the other phases' numbers
            report[phase] = {"error": f"{type(err).__name__}: {err}"}
        report[phase]["phase_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps(report, indent=2))
        print(phase, json.dumps(report[phase]), flush=True)
    for kind in ("", "-compile"):
        served_, direct_ = report.get(f"served{kind}", {}), report.get(f"direct{kind}", {})
        for batch in (1, CONCURRENCY):
            if batch in served_ and batch in direct_:
                ratio = served_[batch]["tokens_per_s"] / direct_[batch]["tokens_per_s"]
                print(f"served/direct{kind or ' (eager)'} at {batch}: {ratio:.2f}")
        for source in (direct_, served_):
            if 1 in source:
                fraction = source[1]["decode_tokens_per_s_per_seq"] / report["bandwidth_bound_tokens_per_s"]
                print(f"batch-1 decode{kind}: {source[1]['decode_tokens_per_s_per_seq']:.0f} tokens/s = "
                      f"{fraction:.1%} of the bandwidth bound")
    os.sync()


if __name__ == "__main__":
    main()
