"""Triton's vLLM-backend contract, checked on every backend that serves it here (pytorch and vllm).

Written from triton-inference-server/vllm_backend, not from our model.py files: the inputs, outputs and
defaults of ``src/model.py`` (``auto_complete_config``, ``utils/request.py``), the additional outputs of
``docs/additional_outputs.md`` and its CI test, the error texts and cancellation of ``src/model.py``. Clients
are written like that repository's samples and tests: tritonclient gRPC, tensors of shape ``[1]``,
``sampling_parameters`` as JSON, answers over ``stream_infer``.

Every input is tried alone, then all pairs of input values (a pairwise covering set, not the full product),
each answer checked against what the contract says it must be; token counts are checked against the
tokenizer. The module starts one server per backend.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from transformers import AutoTokenizer

from tests.contract.conftest import LONG_MAX_TOKENS, Server

pytestmark = pytest.mark.integration
PROMPT = "In this example,"  # vllm_backend's additional-outputs test prompt
OUTPUTS = ("text_output", "finish_reason", "cumulative_logprob", "logprobs", "num_input_tokens", "num_output_tokens")
FLAGS = {"return_finish_reason": "finish_reason", "return_cumulative_logprob": "cumulative_logprob",
         "return_logprobs": "logprobs", "return_num_input_tokens": "num_input_tokens",
         "return_num_output_tokens": "num_output_tokens"}
GREEDY = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
SAMPLINGS = {  # sampling_parameters values the pairwise cases draw from
    "absent": None,
    "greedy": GREEDY,
    "logprobs": {**GREEDY, "logprobs": 2},
    "strings": {"temperature": "0", "top_p": "1", "max_tokens": "6", "ignore_eos": "true"},  # as upstream's test
}
DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default
STREAM_EXCLUDE_ERROR = "Error generating stream: When streaming, `exclude_input_in_output` = False is not allowed."


@dataclass
class Reply:
    """One response: its error text, or its outputs; and whether it is the request's final one."""

    error: str | None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    final: bool = False

    def text(self) -> str:
        return self.outputs["text_output"][0].decode("utf-8")

    def scalar(self, name: str) -> Any:
        value = self.outputs[name].reshape(-1)[0]
        return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def tensor(name: str, value: Any) -> grpcclient.InferInput:
    """A ``[1]`` input as the vLLM backend's samples build them."""
    if isinstance(value, bool):
        item = grpcclient.InferInput(name, [1], "BOOL")
        item.set_data_from_numpy(np.array([value], dtype=bool))
    elif isinstance(value, int):
        item = grpcclient.InferInput(name, [1], "INT32")
        item.set_data_from_numpy(np.array([value], dtype=np.int32))
    elif isinstance(value, float):
        item = grpcclient.InferInput(name, [1], "FP32")
        item.set_data_from_numpy(np.array([value], dtype=np.float32))
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        item = grpcclient.InferInput(name, [1], "BYTES")
        item.set_data_from_numpy(np.array([text.encode("utf-8")], dtype=np.object_))
    return item


def inputs(prompt: str | None = PROMPT, **values: Any) -> list[grpcclient.InferInput]:
    """``text_input`` plus the given inputs (``None`` values left out)."""
    named = {"text_input": prompt, **values}
    return [tensor(name, value) for name, value in named.items() if value is not None]


def reply_of(result: Any, error: Any) -> Reply:
    if error is not None:
        return Reply(error.message() if hasattr(error, "message") else str(error), final=True)
    response = result.get_response()
    outputs = {name: result.as_numpy(name) for name in OUTPUTS if result.as_numpy(name) is not None}
    return Reply(None, outputs, response.parameters["triton_final_response"].bool_param)


class Stream:
    """One gRPC bidirectional stream; replies grouped by request id."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = grpcclient.InferenceServerClient(server.grpc)
        self.replies: queue.Queue[tuple[float, Reply, str]] = queue.Queue()

        def callback(result: Any, error: Any) -> None:
            request_id = result.get_response().id if result is not None else ""
            self.replies.put((time.monotonic(), reply_of(result, error), request_id))

        self.client.start_stream(callback=callback)

    def send(self, request_id: str, tensors: list[grpcclient.InferInput], **kwargs: Any) -> None:
        self.client.async_stream_infer(self.server.model, tensors, request_id=request_id,
                                       enable_empty_final_response=True, **kwargs)

    def collect(self, count: int, timeout_s: float = 120) -> dict[str, list[tuple[float, Reply]]]:
        """``request id -> [(arrival time, reply), ...]`` until ``count`` requests got their final reply."""
        got: dict[str, list[tuple[float, Reply]]] = {}
        finals = 0
        while finals < count:
            at, reply, request_id = self.replies.get(timeout=timeout_s)
            got.setdefault(request_id, []).append((at, reply))
            finals += reply.final
        return got

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def ask(server: Server, tensors: list[grpcclient.InferInput], **kwargs: Any) -> list[Reply]:
    """One request over its own stream, as upstream's tests send them; all its replies (an error reply
    comes without the request id)."""
    stream = Stream(server)
    try:
        stream.send("1", tensors, **kwargs)
        return [reply for replies in stream.collect(1).values() for _, reply in replies]
    finally:
        stream.close()


@pytest.fixture(scope="module")
def tokenizer(server: Server) -> Any:
    return AutoTokenizer.from_pretrained(server.tokenizer_dir)


def sampled_ids(replies: list[Reply]) -> list[int]:
    """The greedy tokens, read from the rank-1 entries of the ``logprobs`` outputs."""
    ids = []
    for reply in replies:
        for position in json.loads(reply.scalar("logprobs")):
            ids.extend(int(token) for token, item in position.items() if item["rank"] == 1)
    return ids


# ------------------------------------------------------------------------------------------ the oracle
@dataclass(frozen=True)
class Case:
    """Values of the contract's inputs (``None``: the input is left out)."""

    stream: bool | None = None
    exclude_input_in_output: bool | None = None
    sampling: str = "absent"
    flags: tuple[tuple[str, bool | None], ...] = ()

    def tensors(self) -> list[grpcclient.InferInput]:
        return inputs(stream=self.stream, exclude_input_in_output=self.exclude_input_in_output,
                      sampling_parameters=SAMPLINGS[self.sampling], **dict(self.flags))

    def label(self) -> str:
        parts = [f"stream={self.stream}", f"exclude={self.exclude_input_in_output}", self.sampling]
        parts += [f"{name.removeprefix('return_')}={value}" for name, value in self.flags if value is not None]
        return ",".join(parts)


def check(case: Case, replies: list[Reply], tokenizer: Any) -> None:
    """What the vLLM backend answers to ``case``, asserted on ``replies``."""
    streaming = case.stream is True
    prepend = not case.exclude_input_in_output if case.exclude_input_in_output is not None else not streaming
    if streaming and prepend:
        assert [(reply.error, reply.final) for reply in replies] == [(STREAM_EXCLUDE_ERROR, True)]
        return
    assert all(reply.error is None for reply in replies), [reply.error for reply in replies]
    assert [reply.final for reply in replies] == [False] * (len(replies) - 1) + [True]
    assert len(replies) >= 1 if streaming else len(replies) == 1
    asked = {FLAGS[name] for name, value in case.flags if value}
    for reply in replies:  # an additional output is on every response of a request that asked, else absent
        assert set(reply.outputs) == {"text_output", *asked}, reply.outputs
    text = "".join(reply.text() for reply in replies)
    if prepend:
        assert text.startswith(PROMPT)
    answer = text.removeprefix(PROMPT) if prepend else text
    exact = SAMPLINGS[case.sampling] is not None  # greedy, ignore_eos, 6 tokens
    if "finish_reason" in asked:
        reasons = [reply.scalar("finish_reason") for reply in replies]
        assert reasons[:-1] == ["None"] * (len(replies) - 1)
        assert reasons[-1] == "length" if exact else reasons[-1] in ("length", "stop")
    if "num_output_tokens" in asked:
        counts = [reply.scalar("num_output_tokens") for reply in replies]
        assert all(count >= 1 for count in counts)
        assert sum(counts) == 6 if exact else sum(counts) <= DEFAULT_MAX_TOKENS
    if "num_input_tokens" in asked:
        expected = len(tokenizer(PROMPT)["input_ids"])
        assert [reply.scalar("num_input_tokens") for reply in replies] == [expected] * len(replies)
    with_logprobs = case.sampling == "logprobs"
    if "cumulative_logprob" in asked:
        values = [reply.scalar("cumulative_logprob") for reply in replies]
        if with_logprobs:
            assert all(later <= earlier for earlier, later in itertools.pairwise([0.0, *values])) and values[-1] < 0
        else:  # vLLM computes it only when logprobs are asked for
            assert all(math.isnan(value) for value in values)
    if "logprobs" in asked:
        if not with_logprobs:
            assert [reply.scalar("logprobs") for reply in replies] == ["null"] * len(replies)
        else:
            for reply in replies:
                positions = json.loads(reply.scalar("logprobs"))
                if "num_output_tokens" in asked:
                    assert len(positions) == reply.scalar("num_output_tokens")
                for position in positions:
                    assert 1 <= len(position) <= 3  # the sampled token and the top 2
                    assert sum(item["rank"] == 1 for item in position.values()) == 1
                    assert all(set(item) == {"logprob", "rank", "decoded_token"} for item in position.values())
            ids = sampled_ids(replies)
            assert len(ids) == 6  # the answer's token count, seen in the tokens themselves
            assert tokenizer.decode(ids, skip_special_tokens=True) == answer


def pairwise(factors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A small set of assignments that holds every pair of values of any two factors (greedy covering)."""
    names = list(factors)
    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]}
    cases = []
    while uncovered:
        (a, va), (b, vb) = min(uncovered, key=lambda pair: (names.index(pair[0][0]), names.index(pair[1][0]),
                                                           repr(pair)))
        case = {a: va, b: vb}
        for name in names:
            if name in case:
                continue
            case[name] = max(factors[name], key=lambda value, n=name: sum(
                ((n, value), (m, case[m])) in uncovered or ((m, case[m]), (n, value)) in uncovered
                for m in case))
        cases.append(case)
        uncovered -= {((x, case[x]), (y, case[y])) for x, y in itertools.combinations(names, 2)}
    return cases


def case_of(values: dict[str, Any]) -> Case:
    flags = tuple((name, values[name]) for name in FLAGS)
    return Case(values["stream"], values["exclude_input_in_output"], values["sampling"], flags)


TRISTATE = [None, False, True]
FACTORS = {"stream": TRISTATE, "exclude_input_in_output": TRISTATE, "sampling": list(SAMPLINGS),
           **{name: TRISTATE for name in FLAGS}}
ASSIGNMENTS = pairwise(FACTORS)
PAIRWISE = [case_of(values) for values in ASSIGNMENTS]
ALONE = [Case(stream=True), Case(stream=False), Case(exclude_input_in_output=True),
         Case(exclude_input_in_output=False), *[Case(sampling=name) for name in SAMPLINGS if name != "absent"],
         *[Case(flags=((name, True),)) for name in FLAGS], Case()]


@pytest.mark.parametrize("case", ALONE, ids=Case.label)
def test_every_input_alone(server: Server, tokenizer: Any, case: Case) -> None:
    check(case, ask(server, case.tensors()), tokenizer)


@pytest.mark.parametrize("case", PAIRWISE, ids=Case.label)
def test_pairs_of_inputs(server: Server, tokenizer: Any, case: Case) -> None:
    check(case, ask(server, case.tensors()), tokenizer)


def test_the_pairwise_cases_cover_every_pair() -> None:
    assert len(ASSIGNMENTS) < 30  # far from the 3**7 * 4 of the full product
    for a, b in itertools.combinations(FACTORS, 2):
        seen = {(values[a], values[b]) for values in ASSIGNMENTS}
        assert seen == set(itertools.product(FACTORS[a], FACTORS[b])), (a, b)


# ------------------------------------------------------------------------------------ sampling fields
def answer(server: Server, sampling: dict, prompt: str = PROMPT, **values: Any) -> tuple[str, dict]:
    """Greedy-by-default text (prompt excluded) and the outputs of its one response."""
    replies = ask(server, inputs(prompt, sampling_parameters=sampling, exclude_input_in_output=True,
                                 return_finish_reason=True, return_num_output_tokens=True, **values))
    assert len(replies) == 1 and replies[0].error is None, replies[0].error
    reply = replies[0]
    return reply.text(), {name: reply.scalar(name) for name in reply.outputs if name != "text_output"}


def test_streamed_answer_equals_the_whole_answer(server: Server) -> None:
    sampling = {**GREEDY, "max_tokens": 24}
    replies = ask(server, inputs(stream=True, sampling_parameters=sampling, return_num_output_tokens=True))
    whole, outputs = answer(server, sampling)
    assert len(replies) >= 2 and "".join(reply.text() for reply in replies) == whole
    assert sum(reply.scalar("num_output_tokens") for reply in replies) == outputs["num_output_tokens"] == 24


def test_seed_makes_sampling_repeatable(server: Server) -> None:
    sampling = {"max_tokens": 12, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    first, second = answer(server, sampling)[0], answer(server, sampling)[0]
    others = {answer(server, {**sampling, "seed": seed})[0] for seed in (8, 9, 10)}
    assert first == second and others != {first}


@pytest.mark.parametrize("narrowing", [{"top_k": 1}, {"top_p": 1e-9}, {"min_p": 1.0}],
                         ids=lambda fields: next(iter(fields)))
def test_narrowed_sampling_is_greedy(server: Server, narrowing: dict) -> None:
    greedy = answer(server, {**GREEDY, "max_tokens": 10})[0]
    assert answer(server, {"max_tokens": 10, "temperature": 1.0, "ignore_eos": True, **narrowing})[0] == greedy


def test_stop_string_ends_the_answer(server: Server) -> None:
    text = answer(server, {**GREEDY, "max_tokens": 30}, "Paris is")[0]
    at = next(i for i in range(4, len(text) - 2)  # three printable characters seen there first
              if text[i:i + 3].isascii() and text[i:i + 3].isprintable() and text.find(text[i:i + 3]) == i)
    stop = text[at:at + 3]
    cut, outputs = answer(server, {**GREEDY, "max_tokens": 30, "stop": [stop]}, "Paris is")
    assert (cut, outputs["finish_reason"]) == (text[:at], "stop")
    kept, _ = answer(server, {**GREEDY, "max_tokens": 30, "stop": stop, "include_stop_str_in_output": True},
                     "Paris is")
    assert kept == text[:at + 3]


def test_min_and_max_tokens_bound_the_answer(server: Server) -> None:
    _, outputs = answer(server, {"max_tokens": 9, "min_tokens": 9, "temperature": 0})
    assert outputs == {"finish_reason": "length", "num_output_tokens": 9}


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 1.5}, {"presence_penalty": 1.0},
                                     {"frequency_penalty": 1.0}], ids=lambda fields: next(iter(fields)))
def test_penalties_are_applied(server: Server, penalty: dict) -> None:
    prompt = "Paris Paris Paris Paris"
    plain = answer(server, {**GREEDY, "max_tokens": 24}, prompt)[0]
    penalized, outputs = answer(server, {**GREEDY, "max_tokens": 24, **penalty}, prompt)
    assert outputs["num_output_tokens"] == 24 and penalized != plain


@pytest.mark.parametrize(("kind", "spec"), [
    ("choice", {"choice": ["yes", "no"]}),
    ("regex", {"regex": "[0-9]{3}-[a-z]{2}"}),
    # a schema whose JSON has no room for whitespace: a random model fills any room with it (vLLM 0.32 takes
    # disable_any_whitespace from its engine config only, so the request's own flag cannot help there)
    ("json", {"json": {"enum": ["red", "green"]}}),
])
def test_structured_outputs(server: Server, kind: str, spec: dict) -> None:
    """``structured_outputs`` as the vLLM backend takes it: a JSON string of vLLM's StructuredOutputsParams."""
    import re

    text, outputs = answer(server, {"max_tokens": 40, "temperature": 0, "structured_outputs": json.dumps(spec)})
    assert outputs["finish_reason"] == "stop", (text, outputs)
    if kind == "choice":
        assert text in ("yes", "no")
    elif kind == "regex":
        assert re.fullmatch(spec["regex"], text), text
    else:
        assert json.loads(text) in ("red", "green")


def test_request_parameters_stand_in_for_sampling_parameters(server: Server) -> None:
    """Without the ``sampling_parameters`` input the backend reads the request's parameters."""
    replies = ask(server, inputs(exclude_input_in_output=True, return_num_output_tokens=True),
                  parameters={"max_tokens": 3, "temperature": 0, "ignore_eos": True})
    assert replies[0].error is None and replies[0].scalar("num_output_tokens") == 3


def test_plain_scalar_inputs(server: Server) -> None:
    """``max_tokens`` and friends as inputs of their own: our pytorch backend's extension; NVIDIA's vLLM
    backend does not declare them, so Triton refuses them there."""
    replies = ask(server, inputs(exclude_input_in_output=True, return_num_output_tokens=True, max_tokens=4,
                                 temperature=0.0, sampling_parameters={"max_tokens": 9, "ignore_eos": True}))
    if server.backend == "pytorch":
        assert replies[0].error is None and replies[0].scalar("num_output_tokens") == 4  # the plain input wins
    else:
        assert f"unexpected inference input 'max_tokens' for model '{server.model}'" in replies[0].error \
            or f"unexpected inference input 'temperature' for model '{server.model}'" in replies[0].error


# -------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("values", "expected"), [
    ({"stream": True, "exclude_input_in_output": False}, STREAM_EXCLUDE_ERROR),
    ({"sampling_parameters": {"lora_name": "adapter"}}, "LoRA feature is not enabled."),
    ({"text_input": ""}, "Error generating stream: The decoder prompt cannot be empty"),
    ({"sampling_parameters": {"temprature": 0.5}},
     "Error generating stream: sampling_parameters: unknown key 'temprature' (not a vllm.SamplingParams field)"),
    ({"sampling_parameters": {"temperature": -1}}, "temperature must be non-negative, got -1"),
    ({"sampling_parameters": {"top_p": 0}}, "top_p must be in (0, 1], got 0"),
    ({"sampling_parameters": {"max_tokens": 0}}, "max_tokens must be at least 1, got 0."),
    ({"sampling_parameters": {"max_tokens": 4, "min_tokens": 5}},
     "min_tokens must be less than or equal to max_tokens=4, got 5."),
    ({"sampling_parameters": {"logprobs": 21}},
     "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"sampling_parameters": {"structured_outputs": json.dumps({"regex": "a", "choice": ["b"]})}},
     "You can only use one kind of structured outputs constraint but multiple are specified"),
    ({"embedding_request": json.dumps({"input": "hi"})}, "does not support 'embed' request"),
], ids=["stream-exclude-false", "lora", "empty-prompt", "unknown-key", "temperature", "top-p", "max-tokens",
        "min-tokens", "logprobs", "two-constraints", "embed"])
def test_error_texts(server: Server, values: dict, expected: str) -> None:
    values = dict(values)  # the table is shared by both backends' runs
    prompt = values.pop("text_input", PROMPT)
    replies = ask(server, inputs(prompt, **values))
    assert len(replies) == 1 and replies[0].final and replies[0].error is not None
    assert expected in replies[0].error, replies[0].error
    # every refusal is worded as NVIDIA's backend words it, the LoRA one without its prefix
    assert replies[0].error.startswith(expected if expected.startswith("LoRA") else "Error generating stream: ")


def test_missing_text_input_is_refused(server: Server) -> None:
    reply = requests.post(f"http://{server.http}/v2/models/{server.model}/generate", timeout=30,
                          json={"parameters": {"max_tokens": 2}})
    assert reply.status_code == 400 and "text_input" in reply.json()["error"]


# ------------------------------------------------------------------------------ batching, cancellation
def test_concurrent_requests_like_the_sample_client(server: Server) -> None:
    """samples/client.py: prompts sent through one ``stream_infer`` of the asyncio client; each greedy answer
    equals the answer to the same prompt alone (batched rows do not change one another)."""
    prompts = ["Rome is" if i % 2 else "What is the capital of France? Tell me" for i in range(6)]
    sampling = {**GREEDY, "max_tokens": 8}
    alone = [answer(server, sampling, prompt)[0] for prompt in prompts[:2]]

    async def together() -> dict[str, str]:
        async def requests_():
            for i, prompt in enumerate(prompts):
                yield {"model_name": server.model, "request_id": str(i),
                       "inputs": inputs(prompt, stream=i % 3 == 0, sampling_parameters=sampling,
                                        exclude_input_in_output=True)}

        texts: dict[str, str] = {}
        async with grpcclient_aio.InferenceServerClient(server.grpc) as client:
            async for result, error in client.stream_infer(requests_(), stream_timeout=120):
                assert error is None, error
                request_id = result.get_response().id
                texts[request_id] = texts.get(request_id, "") + result.as_numpy("text_output")[0].decode()
        return texts

    texts = asyncio.run(together())
    assert [texts[str(i)] for i in range(len(prompts))] == [alone[i % 2] for i in range(len(prompts))]


def cancellations(server: Server) -> int:
    """How many requests the server's log says were cancelled (NVIDIA's backend's log line)."""
    return server.log.read_text().count(f"[{server.backend}] Successfully cancelled the request")


def executions(server: Server) -> int:
    """How many times Triton has called the model's ``execute`` (its statistics extension)."""
    statistics = grpcclient.InferenceServerClient(server.grpc).get_inference_statistics(server.model, as_json=True)
    return int(statistics["model_stats"][0].get("execution_count", 0))


def settled_executions(server: Server, quiet_s: float = 0.5, timeout_s: float = 30) -> int:
    """``executions`` once it has not moved for ``quiet_s``: an earlier request's statistics can land late, and a
    late one read as ours would have ours cancelled while Triton still queues it (CI saw it: no backend log)."""
    deadline = time.monotonic() + timeout_s
    count, since = executions(server), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = executions(server)
        if now != count:
            count, since = now, time.monotonic()
    return count


def wait_for_cancellations(server: Server, count: int, timeout_s: float = 60) -> int:
    """The cancellations logged once ``count`` are, or after ``timeout_s`` (CI's two busy cores are slow)."""
    deadline = time.monotonic() + timeout_s
    while cancellations(server) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return cancellations(server)


def log_tail(server: Server, lines: int = 30) -> str:
    """The end of the server's log, for a failure message."""
    return "\n".join(server.log.read_text().splitlines()[-lines:])


def late_request_replies(server: Server) -> list[tuple[str, Reply]]:
    """A long request, then (once its first piece is back) a short one on the same stream: the replies in arrival
    order until the short one's final; the long one is cancelled then."""
    stream = Stream(server)
    try:
        stream.send("long", inputs(stream=True, sampling_parameters={**GREEDY, "max_tokens": LONG_MAX_TOKENS}))
        _, first, _ = stream.replies.get(timeout=60)
        assert first.error is None
        stream.send("short", inputs(stream=True, sampling_parameters={**GREEDY, "max_tokens": 3}))
        replies: list[tuple[str, Reply]] = []
        while not any(request_id == "short" and reply.final for request_id, reply in replies):
            _, reply, request_id = stream.replies.get(timeout=60)
            replies.append((request_id, reply))
    finally:
        stream.close(cancel=True)  # the long one is not waited for
    return replies


def test_a_late_request_joins_the_running_batch(server: Server) -> None:
    """Iteration-level batching: a short request sent while a long one generates is done long before it, and the
    long one is still running when the short one is done (cancelling it then is logged).

    A starved client (grpc's threads on busy cores; beside two CPU hogs replies were left unread in the socket
    for seconds) lags the server: the short one goes out late, or the cancel arrives after the long one ended.
    Such a round shows the short one's answer after the long one's final, or no cancellation, and says nothing
    of the engine; it is tried again, three rounds at most. An engine that runs requests one after another gives
    such rounds only, and fails."""
    for _ in range(3):
        before = cancellations(server)
        replies = late_request_replies(server)
        assert all(reply.error is None for _, reply in replies)
        ids = [request_id for request_id, _ in replies]
        long_final = next((at for at, (request_id, reply) in enumerate(replies)
                           if request_id == "long" and reply.final), len(replies))
        overlapped = ids.index("short") < long_final
        # the long one runs some 16 s: by then it is cancelled or done, and its log line can't reach the next round
        cancelled = wait_for_cancellations(server, before + 1, timeout_s=30) == before + 1
        if overlapped and cancelled:
            break
    assert long_final == len(replies), f"the long request ended first: {ids}"
    assert cancelled, log_tail(server)


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "whole"])
def test_cancellation(server: Server, streaming: bool) -> None:
    """A cancelled request is aborted at the engine's next step, logged as NVIDIA's backend logs it, and the
    server goes on serving."""
    before, handed_over = cancellations(server), settled_executions(server)
    stream = Stream(server)
    stream.send("cancel-me", inputs(stream=streaming, sampling_parameters={**GREEDY, "max_tokens": LONG_MAX_TOKENS}))
    if streaming:
        _, first, _ = stream.replies.get(timeout=60)
        assert first.error is None and first.text() is not None
    else:  # cancelled while still queued, Triton would answer it without the model: wait until the model has it
        deadline = time.monotonic() + 60
        while executions(server) == handed_over and time.monotonic() < deadline:
            time.sleep(0.02)
        assert executions(server) == handed_over + 1
    stream.close(cancel=True)
    assert wait_for_cancellations(server, before + 1) == before + 1, log_tail(server)
    assert server.log.read_text().count(f"[{server.backend}] Cancelling the request") == before + 1
    assert answer(server, GREEDY)[1]["num_output_tokens"] == 6  # still serving


def test_generate_endpoint(server: Server, tokenizer: Any) -> None:
    """Triton's HTTP generate extension with the inputs as JSON fields and the parameters as sampling."""
    reply = requests.post(f"http://{server.http}/v2/models/{server.model}/generate", timeout=60, json={
        "text_input": PROMPT, "return_num_input_tokens": True, "return_finish_reason": True,
        "parameters": {"max_tokens": 5, "temperature": 0, "ignore_eos": True}}).json()
    assert reply["text_output"].startswith(PROMPT) and reply["finish_reason"] == "length", reply
    assert reply["num_input_tokens"] == len(tokenizer(PROMPT)["input_ids"])


def test_threads_share_one_server(server: Server) -> None:
    """Eight clients at once, each on its own connection, all answered in full."""
    counts: list[int | None] = [None] * 8

    def one(index: int) -> None:
        replies = ask(server, inputs(f"Client {index} asks", stream=index % 2 == 0,
                                     sampling_parameters={**GREEDY, "max_tokens": 5 + index},
                                     return_num_output_tokens=True))
        counts[index] = sum(reply.scalar("num_output_tokens") for reply in replies)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert counts == [5 + i for i in range(8)]
