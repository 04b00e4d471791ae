"""The OpenAI API of a served deployment, through the real ``openai`` client, on both CPU backends.

Answers are checked against what the same model answers over Triton's own protocol (``launcher.query.ask``),
structured outputs against their schemas (``jsonschema``), and a client that goes away against the backend's
log and the front end's metrics. The module starts one server (both backends' models) and one front end per
backend (conftest).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jsonschema
import openai
import pytest
import requests

from launcher.frontend import upstream
from launcher.interfaces import chat_prompt
from launcher.query import Options, ask
from tests.frontend.conftest import BODY_LIMIT, MAX_TOKENS, TIMEOUT_S, FrontEnd

pytestmark = pytest.mark.integration
QUESTION = "What is the capital of France?"
CHAT = [{"role": "user", "content": QUESTION}]
LONG = {"ignore_eos": True}  # a vLLM extension the front end takes: the answer runs to max_tokens


def test_models(front: FrontEnd) -> None:
    client = front.client()
    assert [model.id for model in client.models.list()] == [front.served, front.alias]
    assert client.models.retrieve(front.alias).id == front.alias
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"


def test_chat_answers_as_triton_does(front: FrontEnd) -> None:
    reply = front.client().chat.completions.create(model=front.served, messages=CHAT, temperature=0, max_tokens=24)
    prompt = chat_prompt(front.tokenizer_dir, CHAT)
    assert prompt is not None
    direct = ask(front.grpc, "grpc", front.model, prompt, Options(max_tokens=24, temperature=0.0))
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert (choice.message.content, choice.finish_reason) == (direct.text, direct.finish_reason)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (direct.input_tokens, direct.tokens)


def test_completion_answers_as_triton_does(front: FrontEnd) -> None:
    reply = front.client().completions.create(model=front.alias, prompt="The capital of France is", temperature=0,
                                              max_tokens=12, extra_body=LONG)
    direct = ask(front.grpc, "grpc", front.model, "The capital of France is",
                 Options(max_tokens=12, temperature=0.0, sampling=LONG))
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (direct.text, "length")
    assert reply.usage is not None and reply.usage.completion_tokens == 12 == direct.tokens


def test_chat_stream_joins_to_the_whole_answer(front: FrontEnd) -> None:
    client = front.client()
    whole = client.chat.completions.create(model=front.served, messages=CHAT, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model=front.served, messages=CHAT, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([piece for piece in pieces if piece]) >= 3 and "".join(pieces) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk comes last
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_completion_stream_joins_to_the_whole_answer(front: FrontEnd) -> None:
    client = front.client()
    whole = client.completions.create(model=front.served, prompt="Paris is", temperature=0, max_tokens=20)
    chunks = list(client.completions.create(model=front.served, prompt="Paris is", temperature=0, max_tokens=20,
                                            stream=True))
    assert len(chunks) >= 4 and "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in chunks][-1] == whole.choices[0].finish_reason
    assert all(chunk.usage is None for chunk in chunks)  # no include_usage, no usage


def test_stop_ends_the_answer_before_it(front: FrontEnd) -> None:
    client = front.client()

    def answer(**fields: Any) -> tuple[str, str]:
        choice = client.completions.create(model=front.served, prompt="Paris is", temperature=0, max_tokens=30,
                                           **fields).choices[0]
        return choice.text, choice.finish_reason

    text, _ = answer(extra_body=LONG)
    at = next(i for i in range(4, len(text) - 2)  # three printable characters seen there first
              if text[i:i + 3].isascii() and text[i:i + 3].isprintable() and text.find(text[i:i + 3]) == i)
    stop = text[at:at + 3]
    assert answer(stop=[stop, "never-said"], extra_body=LONG) == (text[:at], "stop")
    streamed = client.completions.create(model=front.served, prompt="Paris is", temperature=0, max_tokens=30,
                                         stop=stop, stream=True, extra_body=LONG)
    assert "".join(chunk.choices[0].text for chunk in streamed) == text[:at]


def test_seed_makes_sampling_repeatable(front: FrontEnd) -> None:
    client = front.client()

    def sample(seed: int) -> str:
        return client.completions.create(model=front.served, prompt="Once upon a time", temperature=1.0,
                                         max_tokens=12, seed=seed, extra_body=LONG).choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert {sample(seed) for seed in (8, 9, 10)} != {first}


SCHEMAS = {
    "nested-object": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                     "population": {"type": "integer", "minimum": 0,
                                                                                    "maximum": 10**9}},
                    "required": ["name", "population"], "additionalProperties": False}},
        "required": ["city", "country"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "cities": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 2, "maxItems": 3}},
        "required": ["cities"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {
        "answer": {"enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["answer", "confidence"], "additionalProperties": False},
}
ASKED = {"nested-object": "Describe Paris and its country as JSON.",
         "array": "Name some French cities as JSON.",
         "enum": "Is Paris the capital of France? Answer as JSON."}


@pytest.mark.parametrize("name", SCHEMAS)
def test_json_schema_is_enforced(front: FrontEnd, name: str) -> None:
    reply = front.client().chat.completions.create(
        model=front.served, messages=[{"role": "user", "content": ASKED[name]}], temperature=0, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name],
                                                                 "strict": True}})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


def test_json_object_is_enforced(front: FrontEnd) -> None:
    reply = front.client().chat.completions.create(
        model=front.served, messages=[{"role": "user", "content": "Describe Paris as JSON."}], temperature=0,
        max_tokens=120, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_logprobs(front: FrontEnd) -> None:
    reply = front.client().chat.completions.create(model=front.served, messages=CHAT, temperature=0, max_tokens=8,
                                                   logprobs=True, top_logprobs=2)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None and reply.usage is not None
    tokens = choice.logprobs.content
    assert len(tokens) == reply.usage.completion_tokens  # the end-of-turn token too, when the answer ends on it
    joined = "".join(token.token for token in tokens)
    assert joined.removesuffix("<|im_end|>") == choice.message.content
    for token in tokens:  # greedy: the sampled token is the most likely one
        assert 1 <= len(token.top_logprobs) <= 2
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())


REFUSALS = [  # case, status, the param the error names
    ("unknown-model", 404, "model"), ("max-tokens-over-limit", 400, "max_tokens"),
    ("prompt-and-max-tokens-over-context", 400, "max_tokens"), ("n", 400, "n"), ("temperature", 400, "temperature"),
    ("tools", 400, "tools"), ("unknown-field", 400, "temprature"), ("oversize-body", 413, None),
    ("wrong-key", 401, None), ("unenforceable-schema", 400, None),
]
UNENFORCEABLE = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}


def refused(front: FrontEnd, case: str) -> Any:
    """Make the request of ``case``."""
    client = front.client()
    chat = {"model": front.served, "messages": CHAT}
    requests_ = {
        "unknown-model": lambda: client.chat.completions.create(**{**chat, "model": "gpt-4o"}),
        "max-tokens-over-limit": lambda: client.chat.completions.create(**chat, max_tokens=MAX_TOKENS + 1),
        # ~1100 tokens of prompt and 256 new ones: more than the context of 1280
        "prompt-and-max-tokens-over-context": lambda: client.completions.create(
            model=front.served, prompt="Paris " * 1100, max_tokens=MAX_TOKENS),
        "n": lambda: client.chat.completions.create(**chat, n=2),
        "temperature": lambda: client.chat.completions.create(**chat, temperature=3),
        "tools": lambda: client.chat.completions.create(**chat, tools=[{"type": "function",
                                                                         "function": {"name": "f"}}]),
        "unknown-field": lambda: client.chat.completions.create(**chat, extra_body={"temprature": 0.5}),
        "oversize-body": lambda: client.completions.create(model=front.served, prompt="x" * BODY_LIMIT, max_tokens=2),
        "wrong-key": lambda: front.client("not-the-key").models.list(),
        "unenforceable-schema": lambda: client.chat.completions.create(**chat, response_format={
            "type": "json_schema", "json_schema": {"name": "a", "schema": UNENFORCEABLE}}),  # never a silent drop
    }
    return requests_[case]()


@pytest.mark.parametrize(("case", "status", "param"), REFUSALS, ids=[case for case, _, _ in REFUSALS])
def test_refusals(front: FrontEnd, case: str, status: int, param: str | None) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        refused(front, case)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and body["message"] and body["param"] == param, body
    if param not in (None, "model"):
        assert body["message"].startswith(f"{param}:"), body


def test_a_client_that_goes_away_cancels_the_generation(front: FrontEnd) -> None:
    before = cancellations(front)
    stream = front.client().chat.completions.create(model=front.served, messages=CHAT, max_tokens=MAX_TOKENS,
                                                    stream=True, extra_body=LONG)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while cancellations(front) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancellations(front) == before + 1
    assert metric(front, 'openai_requests_cancelled_total{reason="client_disconnected"}') >= 1
    assert "client disconnected; cancelling its request in Triton" in front.log.read_text()


def test_a_call_is_sent_once_grpc_has_taken_it(front: FrontEnd, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the front end's one-at-a-time preparation waits for: ``Call.sent`` returns when grpc's writer has
    taken the request (its fallback timer made too long to be what ends the wait), and the answer follows."""
    monkeypatch.setattr(upstream, "SEND_WAIT_S", 600.0)

    async def one() -> int:
        triton = upstream.Upstream(front.grpc, front.model)
        try:
            call = triton.generate(await triton.model(), QUESTION, Options(max_tokens=3, stream=True, sampling=LONG))
            await asyncio.wait_for(call.sent(), 30)
            return sum([piece.output_tokens or 0 async for piece in call])
        finally:
            await triton.close()

    assert asyncio.run(one()) == 3


def cancellations(front: FrontEnd) -> int:
    return front.server_log.read_text().count(f"[{front.backend}] Successfully cancelled the request")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_request_past_its_timeout_is_cancelled(impatient: FrontEnd, stream: bool) -> None:
    """SmolLM2 on two cores takes well over TIMEOUT_S for 256 tokens: a 504, the request cancelled."""
    before = cancellations(impatient)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as err:
        reply = impatient.client().completions.create(model=impatient.served, prompt="Once upon a time",
                                                      max_tokens=MAX_TOKENS, stream=stream, extra_body=LONG)
        for _ in reply if stream else ():
            pass
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 10
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "timeout" and f"{TIMEOUT_S:g} s" in body["message"], body
    if not stream:
        assert isinstance(err.value, openai.APIStatusError) and err.value.status_code == 504
    deadline = time.monotonic() + 30
    while cancellations(impatient) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancellations(impatient) == before + 1


def metric(front: FrontEnd, name: str) -> float:
    text = requests.get(f"{front.root}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_health_and_metrics(front: FrontEnd) -> None:
    assert requests.get(f"{front.root}/health/ready", timeout=10).status_code == 200
    before = metric(front, 'openai_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}')
    reply = front.client().chat.completions.create(model=front.served, messages=CHAT, temperature=0, max_tokens=4)
    assert reply.usage is not None
    assert metric(front, 'openai_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}') == before + 1
    assert metric(front, 'openai_requests_total{endpoint="/v1/chat/completions",status="200"}') >= 1
    assert metric(front, "openai_completion_tokens_total") >= reply.usage.completion_tokens
    assert metric(front, "openai_requests_in_flight") == 0
