"""The OpenAI-compatible HTTP API over one Triton model: a FastAPI app (uvicorn serves it).

Every request is validated (``protocol``), formatted (chat: the tokenizer's chat template, applied here for
every backend), bounded (``max_tokens`` and the model's context) and mapped onto the model's interface
(``launcher.interfaces``); an option that interface cannot carry is a 400 naming it. A request whose client
goes away, or that runs past ``--request-timeout-s``, is cancelled in Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from launcher.errors import LauncherError
from launcher.frontend.metrics import Metrics
from launcher.frontend.protocol import (
    APIError,
    Ask,
    ChatAnswer,
    ChatRequest,
    CompletionRequest,
    Sampling,
    StopText,
    TextAnswer,
    finish_reason,
    parse,
    usage,
)
from launcher.frontend.upstream import Call, ModelError, Unavailable, Upstream
from launcher.interfaces import (
    ENSEMBLE,
    Completion,
    Options,
    Piece,
    ServedModel,
    chat_prompt,
    count_tokens,
    load_tokenizer,
)

log = logging.getLogger("launcher.frontend")
RETRY_S = 0.5  # how often the front end looks for Triton and the model until they are ready
OPENAI_NAMES = {"structured": "response_format"}  # launcher.interfaces.Options fields named otherwise by OpenAI


@dataclass(frozen=True)
class Settings:
    """What the command line says (see ``launcher.frontend.cli``)."""

    triton: str
    model: str
    served_name: str
    aliases: tuple[str, ...] = ()
    tokenizer: str | None = None
    chat_template: str | None = None  # the template's text
    max_tokens: int | None = None
    max_model_len: int | None = None
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    request_timeout_s: float | None = 600.0
    cors_origins: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.served_name, *(alias for alias in self.aliases if alias != self.served_name))


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


class Generation:
    """One request's generation in Triton: its pieces, the answer so far, the metrics it feeds. It is cut
    short (cancelled in Triton) when its client goes away or its deadline passes."""

    def __init__(self, metrics: Metrics, endpoint: str, call: Call, stops: StopText | None, started: float,
                 name: str, timeout_s: float | None, request: Request) -> None:
        self.metrics, self.call, self.stops, self.name = metrics, call, stops, name
        self.ttft, self.itl = metrics.ttft.labels(endpoint), metrics.itl.labels(endpoint)
        self.started = self.last = started
        self.first = True
        self.completion = Completion()
        self.finished = self.closed = False
        self.cut: str | None = None  # why it was cut short: "client_disconnected" or "timeout"
        self.timeout_s = timeout_s
        self.timer = None if timeout_s is None else asyncio.get_running_loop().call_later(
            max(started + timeout_s - time.perf_counter(), 0), self.cut_short, "timeout")
        self.watcher = asyncio.ensure_future(self.watch(request))
        metrics.in_flight.inc()

    async def watch(self, request: Request) -> None:
        """Cut the generation short once the client has closed its connection (its body already read)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.cut_short("client_disconnected")

    def cut_short(self, reason: str) -> None:
        """Cancel the request in Triton; the reader of the next piece gets :class:`ClientGone` or a 504."""
        if not self.finished and self.cut is None:
            self.cut = reason
            self.call.cancel()

    def interruption(self) -> Exception:
        if self.cut == "timeout":
            return APIError(504, f"no answer within {self.timeout_s:g} s (--request-timeout-s)", kind="timeout",
                            code="timeout")
        return ClientGone()

    async def next(self) -> Piece | None:
        """The next piece of the answer; ``None`` at its end."""
        if self.cut is not None:
            raise self.interruption()
        if self.finished:
            return None
        try:
            piece = await self.call.__anext__()
        except asyncio.CancelledError:  # the call cancelled under it, or this task cancelled
            if self.cut is None:
                raise
            raise self.interruption() from None
        except StopAsyncIteration:
            self.finished = True
            tail = self.stops.flush() if self.stops else ""
            return Piece(tail) if tail else None
        except ModelError as err:
            self.finished = True
            raise APIError(400, f"the model refused the request: {err}") from None
        except Unavailable as err:
            self.finished = True
            raise APIError(503, f"the model is not available: {err}", kind="server_error") from None
        if self.stops is not None:
            piece.text = self.stops.feed(piece.text)
            if self.stops.hit:
                piece.finish_reason, self.finished = "stop", True
                self.call.cancel()  # the rest is not wanted
        self.completion.add(piece)
        now = time.perf_counter()
        if piece.text and self.first:
            self.ttft.observe(now - self.started)
            self.first = False
        elif piece.text:
            self.itl.observe((now - self.last) / max(piece.output_tokens or 1, 1))
        self.last = now
        return piece

    async def run(self) -> Completion:
        """The whole answer."""
        while await self.next() is not None:
            pass
        return self.completion

    def close(self) -> None:
        """Count it; cancel it in Triton if it has not ended (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.watcher.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if not self.finished:
            reason = self.cut or "client_disconnected"
            self.metrics.cancelled.labels(reason).inc()
            log.info("%s: %s; cancelling its request in Triton", self.name, reason.replace("_", " "))
        self.call.cancel()
        self.metrics.in_flight.dec()
        self.metrics.prompt_tokens.inc(self.completion.input_tokens or 0)
        self.metrics.completion_tokens.inc(self.completion.output_tokens or 0)


class EventStream(Response):
    """Server-sent events whose generation is closed (cancelled in Triton if unfinished) however the response
    ends: finished, failed, or cut by the client. Not starlette's ``StreamingResponse``: the generation already
    watches for the client going away, with one task rather than a task group's two."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], generation: Generation) -> None:
        self.status_code, self.background, self.events, self.generation = 200, None, events, generation
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.generation.close()


def import_tokenizers() -> None:
    """Import transformers' tokenizers (seconds): while Triton loads the model, not after. Not while another
    thread imports transformers (its lazy module fails half-imported)."""
    from transformers import AutoTokenizer  # noqa: F401


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in ("/v1/models", "/v1/completions", "/v1/chat/completions") else "other"


class CountRequests:
    """ASGI middleware: count every ``/v1`` response by endpoint and status code."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(endpoint_label(scope["path"]), str(status)).inc()


class FrontEnd:
    """The app's state: settings, Triton, the model's interface and tokenizer once known, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.upstream: Upstream | None = None
        self.served: ServedModel | None = None
        self.tokenizer: str | None = None
        self.max_tokens = settings.max_tokens
        self.failure: str | None = None
        # Requests are prepared (validated, templated, counted) one at a time, each until grpc has taken it: of
        # many arriving at once, the first goes out after its own preparation rather than after all of theirs
        # (grpc writes a request from a task of its own, which would run only after every handler ahead of it).
        self.sending = asyncio.Lock()
        self.created = int(time.time())

    # ------------------------------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.upstream = Upstream(self.settings.triton, self.settings.model)
        warming = asyncio.ensure_future(asyncio.to_thread(import_tokenizers))
        loader = asyncio.create_task(self.load(warming))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            with contextlib.suppress(Exception):
                await warming  # no thread left importing
            await self.upstream.close()

    async def load(self, warming: Awaitable[Any]) -> None:
        """Wait for Triton and the model, then read the model's config and load its tokenizer (once
        ``warming``, the import of transformers, is done)."""
        assert self.upstream is not None
        waiting = False
        while True:
            try:
                if await self.upstream.ready():
                    served = await self.upstream.model()
                    break
            except Unavailable:
                pass
            except LauncherError as err:
                self.failure = str(err)
                log.error("cannot serve %s: %s", self.settings.model, err)
                return
            if not waiting:
                log.info("waiting for Triton at %s to serve '%s'", self.settings.triton, self.settings.model)
                waiting = True
            await asyncio.sleep(RETRY_S)
        directory = self.settings.tokenizer or served.tokenizer_dir
        if directory and Path(directory).is_dir():
            try:
                await warming
                await asyncio.to_thread(load_tokenizer, directory)
                self.tokenizer = directory
            except Exception as err:  # a broken tokenizer directory: completions still work
                log.error("cannot load the tokenizer in %s (%s); chat completions are refused", directory, err)
        else:
            log.warning("no tokenizer directory on this machine (%s); chat completions are refused: pass "
                        "--tokenizer DIR", directory or "the model names none")
        if self.max_tokens is None and served.parameters.get("max_output_len", "").isdigit():
            self.max_tokens = int(served.parameters["max_output_len"])
        self.served = served
        log.info("serving Triton model '%s' (%s interface) as %s", served.name, served.kind,
                 ", ".join(self.settings.ids))

    # ---------------------------------------------------------------------------------------- plumbing
    async def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "Incorrect API key provided." if given else
                           "No API key provided: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def body(self, request: Request) -> Any:
        """The request's JSON body, at most ``--max-body-bytes`` (announced or as it arrives)."""
        limit = self.settings.max_body_bytes
        too_large = APIError(413, f"the request body is larger than this server takes ({limit} bytes)",
                             code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(body)
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None

    def serving(self, model: str) -> ServedModel:
        if model not in self.settings.ids:
            raise APIError(404, f"The model '{model}' does not exist; this server serves "
                           f"{', '.join(self.settings.ids)}", param="model", code="model_not_found")
        if self.served is None:
            raise APIError(503, self.failure or f"'{model}' is not ready yet (Triton at {self.settings.triton})",
                           kind="server_error")
        return self.served

    def format_chat(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is None:
            raise APIError(400, "chat completions need the model's tokenizer, which this front end does not have "
                           "(start it with --tokenizer DIR); /v1/completions takes text as it is", param="messages")
        try:
            prompt = chat_prompt(self.tokenizer, messages, self.settings.chat_template)
        except Exception as err:  # jinja2's errors, raise_exception() of the template itself
            raise APIError(400, f"messages: the chat template refuses them: {err}", param="messages") from None
        if prompt is None:
            raise APIError(400, "the model's tokenizer has no chat template (start the front end with "
                           "--chat-template FILE); /v1/completions takes text as it is", param="messages")
        return prompt

    def options(self, ask: Ask, prompt: str, served: ServedModel) -> Options:
        """What to ask Triton for: ``max_tokens`` defaulted and bounded, every field carried or refused."""
        limit, context = self.max_tokens, self.settings.max_model_len
        if ask.max_tokens is not None and limit is not None and ask.max_tokens > limit:
            raise APIError(400, f"max_tokens: {ask.max_tokens} is more than this model generates: at most {limit} "
                           "(model.max_output_len)", param="max_tokens")
        max_tokens = ask.max_tokens or limit
        if context is not None and self.tokenizer is not None:
            used = count_tokens(self.tokenizer, prompt)
            room = context - used
            where = "prompt" if ask.prompt is not None else "messages"
            if room < 1:
                raise APIError(400, f"{where}: the prompt has {used} tokens; this model's context is {context} "
                               "tokens (max_model_len)", param=where)
            if ask.max_tokens is not None and ask.max_tokens > room:
                raise APIError(400, f"max_tokens: the prompt's {used} tokens and max_tokens={ask.max_tokens} "
                               f"exceed this model's context of {context} tokens (max_model_len)",
                               param="max_tokens")
            max_tokens = min(max_tokens or room, room)
        options = Options(**{"temperature": None, **ask.fields, "max_tokens": max_tokens, "stream": ask.stream,
                             "sampling": ask.sampling, "logprobs": ask.logprobs})
        refused = served.refused(options)
        if refused:
            name = OPENAI_NAMES.get(refused[0], refused[0])
            raise APIError(400, f"{name}: not supported by '{ask.model}' (Triton model '{served.name}' speaks the "
                           f"{served.kind} interface, which cannot carry it)", param=name)
        return options

    # --------------------------------------------------------------------------------------- endpoints
    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self.card(name) for name in self.settings.ids]})

    async def model(self, model_id: str) -> JSONResponse:
        if model_id not in self.settings.ids:
            raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return JSONResponse(self.card(model_id))

    def card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "llm-launch",
                "root": self.settings.model, "max_model_len": self.settings.max_model_len}

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, "/v1/chat/completions", ChatRequest)

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, "/v1/completions", CompletionRequest)

    async def complete(self, request: Request, endpoint: str, kind: type[Sampling]) -> Response:
        started = time.perf_counter()
        body = await self.body(request)
        async with self.sending:
            ask = parse(kind, body)
            served = self.serving(ask.model)
            shape: ChatAnswer | TextAnswer
            if ask.messages is not None:
                shape, prompt = ChatAnswer(ask.model, ask.logprobs), self.format_chat(ask.messages)
            else:
                assert ask.prompt is not None
                shape, prompt = TextAnswer(ask.model, ask.logprobs), ask.prompt
            generation, options = await self.send(request, endpoint, shape, served, ask, prompt, started)
        return await self.answer(generation, shape, ask, options)

    async def send(self, request: Request, endpoint: str, shape: ChatAnswer | TextAnswer, served: ServedModel,
                   ask: Ask, prompt: str, started: float) -> tuple[Generation, Options]:
        """Ask Triton; returns once the request is on its way (see ``sending``)."""
        assert self.upstream is not None
        options = self.options(ask, prompt, served)
        stops = StopText(options.stop) if options.stop and served.kind == ENSEMBLE else None
        generation = Generation(self.metrics, endpoint, self.upstream.generate(served, prompt, options), stops,
                                started, shape.head["id"], self.settings.request_timeout_s, request)
        try:
            await generation.call.sent()
        except BaseException:
            generation.close()
            raise
        return generation, options

    async def answer(self, generation: Generation, shape: ChatAnswer | TextAnswer, ask: Ask,
                     options: Options) -> Response:
        try:
            if ask.stream:  # the first piece before the response starts: a refusal is still an HTTP error
                first = await generation.next()
                return EventStream(self.events(generation, shape, first, ask, options), generation)
            completion = await generation.run()
        except ClientGone:
            generation.close()
            return Response(status_code=499)
        except BaseException:
            generation.close()
            raise
        generation.close()
        reason = finish_reason(completion.finish_reason, completion.output_tokens, options.max_tokens)
        return JSONResponse(shape.whole(completion.text, reason, completion.logprobs,
                                        usage(completion.input_tokens, completion.output_tokens)))

    async def events(self, generation: Generation, shape: ChatAnswer | TextAnswer, piece: Piece | None, ask: Ask,
                     options: Options) -> AsyncIterator[bytes]:
        extra = {"usage": None} if ask.include_usage else {}
        opened = False
        try:
            while piece is not None:
                if piece.text or piece.logprobs or not opened:
                    yield sse({**shape.chunk(piece, first=not opened), **extra})
                    opened = True
                piece = await generation.next()
            done = generation.completion
            reason = finish_reason(done.finish_reason, done.output_tokens, options.max_tokens)
            tail = sse({**shape.chunk(None, reason), **extra})
            if ask.include_usage:
                tail += sse(shape.usage_chunk(usage(done.input_tokens, done.output_tokens)))
            yield tail + b"data: [DONE]\n\n"
        except APIError as err:  # after the response started: the error is the stream's last event
            log.info("%s: %s", generation.name, err.message)
            yield sse(err.body())
        except ClientGone:  # nobody left to tell
            pass
        finally:
            generation.close()

    async def ready(self) -> JSONResponse:
        if self.served is not None and self.upstream is not None and await self.upstream.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": self.failure or "not ready"}, status_code=503)

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def api_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, APIError)
    return JSONResponse(err.body(), status_code=err.status,
                        headers={"WWW-Authenticate": "Bearer"} if err.status == 401 else None)


async def http_error(request: Request, err: Exception) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method) in OpenAI's shape."""
    assert isinstance(err, HTTPException)
    return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)


def create_app(settings: Settings) -> FastAPI:
    """The app; Triton is looked for once it starts (``/health/ready`` says when both are ready)."""
    front = FrontEnd(settings)
    app = FastAPI(title="llm-launch OpenAI front end", lifespan=front.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.front = front
    handlers: dict[Any, Callable[..., Awaitable[Response]]] = {APIError: api_error, HTTPException: http_error}
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(front.authorize)])
    v1.add_api_route("/models", front.models, methods=["GET"])
    v1.add_api_route("/models/{model_id:path}", front.model, methods=["GET"])
    v1.add_api_route("/completions", front.completions, methods=["POST"])
    v1.add_api_route("/chat/completions", front.chat, methods=["POST"])
    app.include_router(v1)
    app.add_api_route("/health/ready", front.ready, methods=["GET"])
    app.add_api_route("/metrics", front.prometheus, methods=["GET"])
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(CountRequests, metrics=front.metrics)
    return app
