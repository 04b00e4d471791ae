"""Compile mode compiles its decode step while warming up, never again for a request.

``model.py`` compiles the step only on GPUs (CUDA graphs). Here the same loop runs on CPU under
``torch.compile``'s eager backend (dynamo's guards without code generation) and, once warm, any
recompilation raises: requests with other prompt widths and batch sizes, and requests that join or leave
the running batch, must reuse the warm-up's graphs. On an H100 a stride guard once recompiled the step for
every new prompt width, and the first request after "ready" took 40 s.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

MODEL_PY = REPO / "templates/pytorch/model/1/model.py"
PROMPTS = ["What is the capital of France? Tell me more", "Rome", "Berlin is a city in"]


@pytest.fixture
def model_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """``model.py`` imported outside Triton, with the names of the stub's utility module it needs to start
    and generate (a stand-in we write: no responses are sent here, the jobs have no sender)."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    utils.using_decoupled_model_transaction_policy = lambda config: True
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("pytorch_model", MODEL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requests_reuse_the_warm_up_graphs(model_module: types.ModuleType, tiny_hf: Path) -> None:
    params = {"model_dir": str(tiny_hf), "dtype": "float32", "device": "cpu", "max_batch_size": "4",
              "max_input_len": "64", "max_output_len": "32", "compile": "true"}
    config = {"max_batch_size": 0, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    model = model_module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_instance_device_id": "0"})
    engine = model.engine
    engine.stop()  # this test drives the loop itself
    torch._dynamo.reset()
    engine.decode_step = torch.compile(engine.forward_step, backend="eager", fullgraph=True)
    model.warm_up()

    def jobs(rows: int, first: int = 5) -> list:
        return [model.job(PROMPTS[i % len(PROMPTS)], {"max_tokens": first + i, "temperature": 0, "ignore_eos": True})
                for i in range(rows)]

    with torch._dynamo.config.patch(error_on_recompile=True):
        for rows in (1, 3, 2, 4):  # rows leave one by one as their max_tokens differ: every bucket is used
            batch = jobs(rows)
            engine.run(batch)
            assert [len(job.tokens) for job in batch] == [5 + i for i in range(rows)]
        early, late = jobs(2, first=12), jobs(2, first=3)
        engine.waiting.extend(early)
        for _ in range(4):
            engine.step()
        engine.run(late)  # two requests join the two running rows
        assert [len(job.tokens) for job in early + late] == [12, 13, 3, 4]
