"""OpenAI's request and response bodies: a request validated into what to ask the model (:class:`Ask`), and
the answer written back as OpenAI's JSON, whole or as the chunks of a stream (:class:`ChatAnswer`,
:class:`TextAnswer`).

Requests are read strictly: a field this server cannot honour is a 400 naming it, never dropped. Fields that
change nothing in the answer (``user``, ``metadata``, ...) are accepted; ``top_k`` and ``ignore_eos`` are taken
as vLLM's OpenAI server takes them (extensions, sent with the openai client's ``extra_body``).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from launcher.interfaces import Piece

# Fields that change nothing in an answer: accepted with any value.
HARMLESS = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
            "parallel_tool_calls"}
# OpenAI fields this server does not implement, with the value each may still take (its default, or "off").
REFUSED = {"tools": None, "tool_choice": "none", "functions": None, "function_call": "none", "logit_bias": {},
           "audio": None, "modalities": ["text"], "prediction": None, "web_search_options": None,
           "reasoning_effort": None, "verbosity": None, "best_of": 1, "echo": False, "suffix": ""}


UNION_TAG = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*|(list|dict|function-\w+)\[.*\])$")


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchema(Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # the schema is enforced either way


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_chat(self) -> dict[str, str]:
        """The message as a chat template takes it (text parts joined; ``developer`` is a system message)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class Sampling(BaseModel):
    """The fields chat completions and completions share."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    ignore_eos: bool | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)


@dataclass(frozen=True)
class Ask:
    """A validated request: the prompt (completions) or messages (chat), and what to generate."""

    model: str
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    logprobs: int | None  # top alternatives per token (0: the sampled token's only); None: no logprobs
    fields: dict[str, Any] = field(default_factory=dict)  # launcher.interfaces.Options fields
    sampling: dict[str, Any] = field(default_factory=dict)  # vLLM extensions


def parse(kind: type[Sampling], body: Any) -> Ask:
    """``body`` (parsed JSON) as an :class:`Ask`; an :class:`APIError` naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        request = kind.model_validate(body)
    except ValidationError as err:
        # the branch of a union that got furthest says most; its tag ("str", "list[TextPart]") is no field
        first = max(err.errors(), key=lambda error: len(error["loc"]))
        where = ".".join(str(part) for part in first["loc"] if not UNION_TAG.match(str(part))) or None
        raise APIError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where) from None
    for name, value in (request.model_extra or {}).items():
        if name in HARMLESS:
            continue
        if name not in REFUSED:
            raise APIError(400, f"{name}: unknown field (this server takes OpenAI's fields, top_k and ignore_eos)",
                           param=name)
        if value is not None and value != REFUSED[name]:
            raise APIError(400, f"{name}: not supported by this server", param=name)
    if request.n not in (None, 1):
        raise APIError(400, "n: this server returns one choice per request; ask n times instead", param="n")
    return _ask(request)


def _ask(request: Sampling) -> Ask:
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if any(not stop for stop in stops):
        raise APIError(400, "stop: an empty stop string would end every answer at once", param="stop")
    fields = {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
              "presence_penalty": request.presence_penalty, "frequency_penalty": request.frequency_penalty,
              "seed": request.seed, "stop": tuple(stops), "structured": structured(request.response_format)}
    sampling = {"ignore_eos": True} if request.ignore_eos else {}
    usage = bool(request.stream_options and request.stream_options.include_usage)
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options: only with stream=true", param="stream_options")
    common = {"model": request.model, "stream": bool(request.stream), "include_usage": usage,
              "fields": {k: v for k, v in fields.items() if v not in (None, ())}, "sampling": sampling}
    if isinstance(request, ChatRequest):
        if request.top_logprobs is not None and not request.logprobs:
            raise APIError(400, "top_logprobs: only with logprobs=true", param="top_logprobs")
        return Ask(prompt=None, messages=[message.as_chat() for message in request.messages],
                   max_tokens=request.max_completion_tokens or request.max_tokens,
                   logprobs=(request.top_logprobs or 0) if request.logprobs else None, **common)
    assert isinstance(request, CompletionRequest)
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise APIError(400, "prompt: this server takes one prompt per request", param="prompt")
    return Ask(prompt=prompts[0], messages=None, max_tokens=request.max_tokens, logprobs=request.logprobs,
               **common)


def structured(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """``response_format`` as vLLM's StructuredOutputsParams (``None``: free text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"json_object": True}
    assert response_format.json_schema is not None
    return {"json": response_format.json_schema.json_schema}


def finish_reason(reason: str | None, output_tokens: int | None, max_tokens: int | None) -> str:
    """OpenAI's finish reason for what the model said (``length`` when it said nothing but used every token)."""
    if reason in ("stop", "length"):
        return reason
    if reason is None and output_tokens is not None and max_tokens is not None and output_tokens >= max_tokens:
        return "length"
    return "stop"


def usage(input_tokens: int | None, output_tokens: int | None) -> dict[str, int] | None:
    """OpenAI's usage from the model's own counts; ``None`` where the model does not count."""
    if input_tokens is None or output_tokens is None:
        return None
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def _sampled(position: dict[str, dict[str, Any]], top: int) -> tuple[tuple[str, float], list[tuple[str, float]]]:
    """A position's sampled token (the first entry) and its ``top`` alternatives, as (text, logprob)."""
    entries = list(position.values())
    chosen = (entries[0].get("decoded_token") or "", float(entries[0]["logprob"]))
    ranked = sorted((item for item in entries if item["rank"] <= top), key=lambda item: item["rank"])
    return chosen, [(item.get("decoded_token") or "", float(item["logprob"])) for item in ranked]


class ChatAnswer:
    """One chat completion's JSON: the whole answer, or its stream's chunks."""

    def __init__(self, model: str, top: int | None) -> None:
        self.head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        self.top = top

    def logprobs(self, positions: list[dict[str, dict[str, Any]]] | None) -> dict[str, Any] | None:
        if self.top is None or positions is None:
            return None
        content = []
        for position in positions:
            (token, logprob), alternatives = _sampled(position, self.top)
            content.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                            "top_logprobs": [{"token": text, "logprob": value, "bytes": list(text.encode())}
                                             for text, value in alternatives]})
        return {"content": content, "refusal": None}

    def whole(self, text: str, reason: str, logprobs: list | None, counts: dict | None) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                  "logprobs": self.logprobs(logprobs), "finish_reason": reason}
        return {**self.head, "object": "chat.completion", "choices": [choice], "usage": counts}

    def chunk(self, piece: Piece | None, reason: str | None = None, first: bool = False) -> dict[str, Any]:
        """A chunk of ``piece``'s text (``None``: the last chunk, which carries the finish reason)."""
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if piece is not None:
            delta["content"] = piece.text
        choice = {"index": 0, "delta": delta, "logprobs": self.logprobs(piece.logprobs) if piece else None,
                  "finish_reason": reason}
        return {**self.head, "object": "chat.completion.chunk", "choices": [choice]}

    def usage_chunk(self, counts: dict | None) -> dict[str, Any]:
        return {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": counts}


class TextAnswer:
    """One completion's JSON: the whole answer, or its stream's chunks."""

    def __init__(self, model: str, top: int | None) -> None:
        self.head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        self.top = top
        self.offset = 0  # text_offset of the next token

    def logprobs(self, positions: list[dict[str, dict[str, Any]]] | None) -> dict[str, Any] | None:
        if self.top is None or positions is None:
            return None
        tokens, values, tops, offsets = [], [], [], []
        for position in positions:
            (token, logprob), alternatives = _sampled(position, self.top)
            tokens.append(token)
            values.append(logprob)
            tops.append(dict(alternatives))
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

    def whole(self, text: str, reason: str, logprobs: list | None, counts: dict | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": self.logprobs(logprobs), "finish_reason": reason}
        return {**self.head, "object": "text_completion", "choices": [choice], "usage": counts}

    def chunk(self, piece: Piece | None, reason: str | None = None, first: bool = False) -> dict[str, Any]:
        """A chunk of ``piece``'s text (``None``: the last chunk, which carries the finish reason)."""
        choice = {"index": 0, "text": piece.text if piece else "",
                  "logprobs": self.logprobs(piece.logprobs) if piece else None, "finish_reason": reason}
        return {**self.head, "object": "text_completion", "choices": [choice]}

    def usage_chunk(self, counts: dict | None) -> dict[str, Any]:
        return {**self.head, "object": "text_completion", "choices": [], "usage": counts}


class StopText:
    """Ends streamed text before the first of ``stops``, across pieces: a tail that could begin a stop string
    is held back until the next piece says. For interfaces whose own stop words are tokens kept in the text
    (TensorRT-LLM's ensemble)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.held, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        """What of ``text`` can go out now."""
        if self.hit:
            return ""
        text = self.held + text
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.hit, self.held = True, ""
            return text[:min(found)]
        keep = max((size for stop in self.stops for size in range(1, len(stop)) if text.endswith(stop[:size])),
                   default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The held-back tail, once the answer ended without a stop string."""
        text, self.held = self.held, ""
        return text
