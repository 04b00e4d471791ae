"""vLLM alone vs vLLM through Triton vs the in-framework pytorch backend through Triton, on SmolLM2.

One run, one after the other on the same machine: (a) vLLM's ``AsyncLLM`` in this process, built from
the rendered ``model.json``; (b) the same ``model.json`` served by ``tritonserver`` through our ``vllm``
backend; (c) the pytorch backend (``backend.streaming=true``) through ``tritonserver``, sent the same
requests as (b). For 1 and 8 concurrent requests x 64 new tokens (greedy, ``ignore_eos``), it prints generated tokens/s
(all requests' tokens over the wall time of the batch) and the mean time to first token, then the
ratios. Clients stream over gRPC, as a user's would. Usage: ``python bench/vllm_bench.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEW_TOKENS = 64
CONCURRENCY = (1, 8)
QUESTION = "Write a long story about a dragon who lives in Paris."


def measure(run_batch, concurrency: int, repeat: int) -> tuple[float, float]:
    """Median tokens/s and mean TTFT (s) of ``repeat`` batches of ``concurrency`` requests."""
    rates, ttfts = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        results = run_batch(concurrency)  # [(ttft_s, tokens)]
        wall = time.perf_counter() - start
        rates.append(sum(tokens for _, tokens in results) / wall)
        ttfts.append(statistics.mean(ttft for ttft, _ in results))
    return statistics.median(rates), statistics.median(ttfts)


def bench_engine(engine_args: dict, prompt: str, repeat: int) -> dict[int, tuple[float, float]]:
    """(a) vLLM's AsyncLLM in this process, fed as our Triton backend feeds it."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    loop = asyncio.new_event_loop()

    async def start() -> AsyncLLM:
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args))

    engine = loop.run_until_complete(start())

    async def one() -> tuple[float, int]:
        start, first, tokens = time.perf_counter(), None, 0
        (engine_input,) = await engine.renderer.render_cmpl_async([{"prompt": prompt}])
        async for output in engine.generate(engine_input, params, uuid.uuid4().hex):
            if first is None and output.outputs[0].token_ids:
                first = time.perf_counter() - start
            tokens += len(output.outputs[0].token_ids)
        return first or 0.0, tokens

    async def batch(n: int) -> list[tuple[float, int]]:
        return await asyncio.gather(*(one() for _ in range(n)))

    try:
        run = lambda n: loop.run_until_complete(batch(n))  # noqa: E731
        run(1)  # warm-up
        return {n: measure(run, n, repeat) for n in CONCURRENCY}
    finally:
        engine.shutdown()
        loop.close()


def bench_triton(root: Path, deps: list, model: str, prompt: str, params: dict,
                 repeat: int) -> tuple[dict[int, tuple[float, float]], float]:
    """(b)/(c): ``tritonserver`` serving ``deps``; requests in the vLLM backend's layout streamed over one gRPC
    stream; tokens are the model's own counts (``num_output_tokens``)."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    from tests.vllm.conftest import triton

    def tensors() -> list:
        values = {"text_input": np.array([prompt.encode()], dtype=np.object_), "stream": np.array([True]),
                  "exclude_input_in_output": np.array([True]), "return_num_output_tokens": np.array([True]),
                  "sampling_parameters": np.array([json.dumps(params).encode()], dtype=np.object_)}
        out = []
        for name, value in values.items():
            tensor = grpcclient.InferInput(name, [1], "BYTES" if value.dtype == object else "BOOL")
            tensor.set_data_from_numpy(value)
            out.append(tensor)
        return out

    with triton(root, deps) as served:
        client = grpcclient.InferenceServerClient(served.grpc)
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((time.perf_counter(), result, error)))

        def batch(n: int) -> list[tuple[float, int]]:
            sent = {}
            for _ in range(n):
                request_id = uuid.uuid4().hex
                sent[request_id] = time.perf_counter()
                client.async_stream_infer(model, tensors(), request_id=request_id, enable_empty_final_response=True)
            first: dict[str, float] = {}
            tokens: dict[str, int] = dict.fromkeys(sent, 0)
            done = 0
            while done < n:
                at, result, error = results.get(timeout=300)
                if error is not None:
                    raise RuntimeError(str(error))
                response = result.get_response()
                text, count = result.as_numpy("text_output"), result.as_numpy("num_output_tokens")
                if text is not None and text.size:
                    first.setdefault(response.id, at - sent[response.id])
                if count is not None:
                    tokens[response.id] += int(count.sum())
                done += response.parameters["triton_final_response"].bool_param
            return [(first[r], tokens[r]) for r in sent]

        try:
            batch(1)  # warm-up
            return {n: measure(batch, n, repeat) for n in CONCURRENCY}, served.ready_s
        finally:
            client.stop_stream()
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="batches per measurement (median)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tests.vllm.conftest import engine_args, render

    root = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    vllm_dep = render(root / "vllm", export=True)
    torch_dep = render(root / "pytorch", "backend=pytorch", "backend.streaming=true")
    model_json = engine_args(root / "vllm", "llm")
    tokenizer = AutoTokenizer.from_pretrained(model_json["model"])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)

    vllm_params = {"max_tokens": NEW_TOKENS, "temperature": 0.0, "ignore_eos": True}
    print(f"SmolLM2-135M-Instruct, {NEW_TOKENS} new tokens, vLLM dtype {model_json['dtype']}; results in {root}")
    a = bench_engine(model_json, chat, args.repeat)
    b, ready_b = bench_triton(root / "vllm", [vllm_dep], "llm", chat, vllm_params, args.repeat)
    c, ready_c = bench_triton(root / "pytorch", [torch_dep], "llm", chat, vllm_params, args.repeat)
    print(f"ready: vLLM through Triton {ready_b:.1f} s, pytorch through Triton {ready_c:.1f} s")
    print(f"{'concurrent':>10} | {'(a) vLLM alone':>22} | {'(b) vLLM via Triton':>22} | "
          f"{'(c) pytorch via Triton':>22} | {'b/a':>5} | {'c/a':>5}")
    for n in CONCURRENCY:
        cells = [f"{rate:7.1f} tok/s {ttft * 1000:6.0f} ms" for rate, ttft in (a[n], b[n], c[n])]
        print(f"{n:>10} | {' | '.join(f'{cell:>22}' for cell in cells)} | "
              f"{b[n][0] / a[n][0]:5.2f} | {c[n][0] / a[n][0]:5.2f}")
    print("(tok/s: generated tokens of all requests / wall time; ms: mean time to first token)")


if __name__ == "__main__":
    main()
