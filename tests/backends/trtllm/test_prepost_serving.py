"""The engine runtime's preprocessing and postprocessing models served by a real local tritonserver.

They need only a tokenizer, so the exported TensorRT-LLM checkpoint's tokenizer is enough: export and
render the tiny Llama for the engine runtime, load just those two models, and round-trip prompts
through token ids (the C++ ``tensorrt_llm`` model and the ensemble need a GPU and are not loaded).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from transformers import AutoTokenizer

from launcher.server import TritonProcess, free_ports
from launcher.triton import find_triton, require_triton
from tests.fixtures.tiny_models import write_hf

pytestmark = pytest.mark.integration
PROMPTS = ["What is the capital of France?", "Paris"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(http url, tokenizer dir)`` of a server holding the rendered preprocessing + postprocessing."""
    from launcher.pipeline import deploy
    from tests.conftest import compose_spec

    root = tmp_path_factory.mktemp("prepost")
    spec = ["model=tiny-llama", "model.max_input_len=128", f"model.checkpoint={write_hf(root / 'hf')}",
            "backend=trtllm", "backend.runtime=engine", "hardware=h100x1", "backend.max_batch_size=4",
            f"output_dir={root / 'out'}", f"cache_dir={root / 'cache'}"]
    exported = deploy(compose_spec([*spec, "action=export"]))
    out = Path(deploy(compose_spec([*spec, "action=render"])).output_dir)
    triton = require_triton(find_triton())
    assert triton.root is not None, "the nvidia-pytriton wheel's tritonserver is needed"
    http, grpc, metrics = free_ports("127.0.0.1", 3)
    command = [str(triton.binary), f"--model-repository={out / 'model_repository'}",
               f"--backend-directory={out / 'backends'}", "--model-control-mode=explicit",
               "--load-model=preprocessing", "--load-model=postprocessing", "--http-address=127.0.0.1",
               f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
               "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=5"]
    with TritonProcess(command, {**triton.environment(), "HF_HUB_OFFLINE": "1"}, root / "server.log") as server:
        server.wait_ready(f"127.0.0.1:{grpc}", timeout_s=120)
        yield f"127.0.0.1:{http}", Path(exported.export_dir) / "checkpoint"


def tensor(name: str, value: np.ndarray, dtype: str) -> httpclient.InferInput:
    data = httpclient.InferInput(name, list(value.shape), dtype)
    data.set_data_from_numpy(value)
    return data


def preprocess(url: str, prompts: list[str], **extra: np.ndarray) -> httpclient.InferResult:
    inputs = [tensor("QUERY", np.array([[p.encode()] for p in prompts], dtype=np.object_), "BYTES"),
              tensor("REQUEST_OUTPUT_LEN", np.full((len(prompts), 1), 16, dtype=np.int32), "INT32")]
    inputs += [tensor(k, v, "BYTES") for k, v in extra.items()]
    with httpclient.InferenceServerClient(url) as client:
        return client.infer("preprocessing", inputs)


def test_text_to_ids_and_back(served: tuple[str, Path]) -> None:
    url, tokenizer_dir = served
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    result = preprocess(url, PROMPTS)
    ids, lengths = result.as_numpy("INPUT_ID"), result.as_numpy("REQUEST_INPUT_LEN")
    expected = [tokenizer.encode(p) for p in PROMPTS]
    assert lengths.reshape(-1).tolist() == [len(e) for e in expected]
    assert ids.shape == (2, max(len(e) for e in expected))
    for row, want in zip(ids, expected, strict=True):
        assert row[: len(want)].tolist() == want
        assert set(row[len(want):].tolist()) <= {tokenizer.pad_token_id}
    assert result.as_numpy("REQUEST_OUTPUT_LEN").reshape(-1).tolist() == [16, 16]
    assert result.as_numpy("OUT_END_ID").reshape(-1).tolist() == [tokenizer.eos_token_id] * 2
    tokens = ids[:, None, :]  # [batch, beams, tokens], as the TensorRT-LLM model returns them
    with httpclient.InferenceServerClient(url) as client:
        decoded = client.infer("postprocessing", [tensor("TOKENS_BATCH", tokens, "INT32"),
                                                  tensor("SEQUENCE_LENGTH", lengths.astype(np.int32), "INT32")])
    assert [t.decode() for t in decoded.as_numpy("OUTPUT").reshape(-1)] == PROMPTS


def test_stop_words_become_a_word_list(served: tuple[str, Path]) -> None:
    url, tokenizer_dir = served
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = np.array([[b"Paris", b" Berlin"]], dtype=np.object_)
    lists = preprocess(url, PROMPTS[:1], STOP_WORDS_DICT=words).as_numpy("STOP_WORDS_IDS")
    first, second = (tokenizer.encode(w, add_special_tokens=False) for w in ("Paris", " Berlin"))
    assert lists.shape == (1, 2, len(first) + len(second))
    assert lists[0, 0].tolist() == first + second
    assert lists[0, 1].tolist() == [len(first), len(first) + len(second)] + [-1] * (len(first) + len(second) - 2)
    assert preprocess(url, PROMPTS[:1]).as_numpy("BAD_WORDS_IDS").tolist() == [[[0], [-1]]]
