"""``llm-query``: ask a model served by Triton, whichever backend serves it.

The served model's config says which request interface it speaks (``launcher.interfaces``: the vLLM-backend
contract of the pytorch and vllm backends, TensorRT-LLM's llmapi model or its ensemble). The prompt is
formatted with the tokenizer's chat template here, the same way for every backend (``--tokenizer DIR``, else
the directory the deployment names in its ``tokenizer_dir`` parameter; ``--raw`` sends the prompt as it is).
Decoupled (streaming) models are asked over gRPC's bidirectional stream, or Triton's HTTP generate endpoints.
``--openai`` asks llm-launch's OpenAI front end instead, through the ``openai`` client: chat completions (the front
end applies the chat template), or completions of the text as it is with ``--raw``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from launcher.errors import LauncherError, exit_with, user_error
from launcher.interfaces import Completion, Options, Reader, ServedModel, chat_prompt, read_result

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "openai": 9000}
EMPTY_ANSWER_EXIT = 1
OPENAI_KEY_ENV = "OPENAI_API_KEY"  # where the openai client looks for a key by default
__all__ = ["Answer", "Options", "ask", "ask_openai", "connect", "main", "prompt_for", "run"]


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float
    tokens: int | None  # generated tokens, where the model reports them
    input_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.latency_s if self.tokens and self.latency_s > 0 else None


def fetch_config(client: Any, model: str) -> dict[str, Any]:
    """The served model's config as a dict (the gRPC JSON form is unwrapped)."""
    config = client.get_model_config(model, **({"as_json": True} if hasattr(client, "start_stream") else {}))
    return config.get("config", config)


def connect(url: str, protocol: str, model: str, timeout_s: float) -> tuple[Any, Any, ServedModel]:
    """A client, its module and the model's interface; a clear error when there is no such server/model."""
    from tritonclient.utils import InferenceServerException

    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(url)
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(url, network_timeout=timeout_s)
    try:
        live = client.is_server_live()
    except Exception:  # connection refused, bad address, wrong protocol on that port
        live = False
    if not live:
        client.close()
        raise user_error("--url", f"no Triton server answers {protocol} at {url}",
                         "start one with llm-launch, or pass --url host:port and --protocol")
    try:
        config = fetch_config(client, model)
    except InferenceServerException as err:
        client.close()
        raise user_error("--model", f"'{model}' is not served at {url}: {err.message()}",
                         "pass the served name (llm-launch's model.served_name)") from err
    try:
        return client, module, ServedModel.from_config(model, config)
    except LauncherError:
        client.close()
        raise


def went_away(url: str) -> LauncherError:
    return user_error("--url", f"the server at {url} went away during the request",
                      "it stopped or crashed: read its log (llm-launch's <output_dir>/server.log), then restart it")


def timed_out(model: str, timeout_s: float) -> LauncherError:
    return user_error("--timeout", f"no answer from '{model}' within {timeout_s:g} s", "raise --timeout")


def stream(client: Any, module: Any, model: ServedModel, inputs: list[Any],
           on_piece: Callable[[str], None] | None, timeout_s: float) -> Completion:
    """Ask a decoupled model over gRPC's stream; pieces go to ``on_piece`` as they arrive."""
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    completion, reader = Completion(), Reader(model)
    try:
        client.async_stream_infer(model.name, inputs, enable_empty_final_response=True,
                                  outputs=model.requested_outputs(module))
        while True:
            try:
                result, error = responses.get(timeout=timeout_s)
            except queue.Empty:
                raise timed_out(model.name, timeout_s) from None
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                piece = reader.read(result)
                completion.add(piece)
                if on_piece and piece.text:
                    on_piece(piece.text)
            if response.parameters["triton_final_response"].bool_param:
                return completion
    finally:
        client.stop_stream()


def generate_http(url: str, model: ServedModel, values: dict[str, Any], on_piece: Callable[[str], None] | None,
                  timeout_s: float) -> Completion:
    """Ask a decoupled model over HTTP: Triton's ``generate`` (one response) or ``generate_stream`` (SSE)."""
    streaming = bool(values.get("stream") or values.get("streaming"))
    endpoint = "generate_stream" if streaming else "generate"
    request = urllib.request.Request(f"http://{url}/v2/models/{model.name}/{endpoint}",
                                     data=json.dumps(values).encode(), headers={"Content-Type": "application/json"})
    completion, reader = Completion(), Reader(model)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            events = (line[len(b"data:"):] for line in reply if line.startswith(b"data:")) if streaming \
                else [reply.read()]
            for event in events:
                body = json.loads(event)
                if "error" in body:
                    raise user_error("--model", f"'{model.name}' at {url} failed the request: {body['error']}",
                                     "check the prompt and sampling options, and the server's log")
                piece = reader.read_json(body)
                completion.add(piece)
                if on_piece and piece.text:
                    on_piece(piece.text)
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise user_error("--model", f"'{model.name}' at {url} failed the request: {detail}",
                         "check the prompt and sampling options, and the server's log") from err
    except TimeoutError:
        raise timed_out(model.name, timeout_s) from None
    except (OSError, http.client.HTTPException) as err:  # reset, refused, closed mid-answer
        raise went_away(url) from err
    return completion


def ask(url: str, protocol: str, model: str, prompt: str, options: Options,
        on_piece: Callable[[str], None] | None = None, timeout_s: float = 600.0) -> Answer:
    """Send ``prompt`` (as it is: see :func:`prompt_for`) to ``model`` at ``url``; wait for the whole answer."""
    from tritonclient.utils import InferenceServerException

    client, module, served = connect(url, protocol, model, timeout_s)
    try:
        values = served.values(prompt, options)
        start = time.perf_counter()
        if served.decoupled and protocol == "http":
            completion = generate_http(url, served, values, on_piece, timeout_s)
        elif served.decoupled:
            completion = stream(client, module, served, served.tensors(module, values), on_piece, timeout_s)
        else:
            timeout = {"client_timeout": timeout_s} if protocol == "grpc" else {}  # http: set on the client
            completion = Completion()
            completion.add(read_result(client.infer(model, served.tensors(module, values),
                                                    outputs=served.requested_outputs(module), **timeout)))
        return Answer(completion.text, time.perf_counter() - start, completion.output_tokens,
                      completion.input_tokens, completion.finish_reason)
    except InferenceServerException as err:
        if str(err.status()) == "StatusCode.UNAVAILABLE":
            raise went_away(url) from err
        raise user_error("--model", f"'{model}' at {url} failed the request: {err.message()}",
                         "check the prompt and sampling options, and the server's log") from err
    finally:
        client.close()


def openai_base(url: str) -> str:
    """The API root for ``url`` (``HOST:PORT``, or a whole ``http(s)://.../v1``)."""
    return url if url.startswith(("http://", "https://")) else f"http://{url}/v1"


def ask_openai(url: str, model: str, prompt: str, options: Options, *, chat: bool = True, api_key: str | None = None,
               on_piece: Callable[[str], None] | None = None, timeout_s: float = 600.0) -> Answer:
    """Ask ``model`` through an OpenAI-compatible API at ``url`` with the ``openai`` client: ``prompt`` as the
    user's message of a chat (``chat``; the server applies the chat template), else as text to complete."""
    import openai

    client = openai.OpenAI(base_url=openai_base(url), api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    request: dict[str, Any] = {"model": model, "max_tokens": options.max_tokens, "temperature": options.temperature,
                               "top_p": options.top_p, "stop": list(options.stop) or None, "seed": options.seed}
    request = {key: value for key, value in request.items() if value is not None}
    if options.top_k is not None:
        request["extra_body"] = {"top_k": options.top_k}
    if options.stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}}
    create = client.chat.completions.create if chat else client.completions.create
    text, reason, usage = "", None, None
    start = time.perf_counter()
    try:
        reply = create(**request, **({"messages": [{"role": "user", "content": prompt}]} if chat else
                                     {"prompt": prompt}))
        for chunk in reply if options.stream else [reply]:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                piece = choice.text if not chat else (choice.delta if options.stream else choice.message).content
                text += piece or ""
                reason = choice.finish_reason or reason
                if on_piece and piece:
                    on_piece(piece)
    except openai.APITimeoutError:
        raise timed_out(model, timeout_s) from None
    except openai.APIConnectionError:
        raise user_error("--url", f"no OpenAI API answers at {openai_base(url)}",
                         "start llm-launch (server.openai=true), or pass the front end's --url host:port") from None
    except openai.APIStatusError as err:
        key = "--api-key-env" if err.status_code == 401 else "--model"
        raise user_error(key, f"{openai_base(url)} refused the request ({err.status_code}): {api_message(err)}",
                         "pass the key's variable with --api-key-env" if err.status_code == 401 else
                         "check the model id (GET /v1/models) and the sampling options") from None
    finally:
        client.close()
    return Answer(text, time.perf_counter() - start, usage.completion_tokens if usage else None,
                  usage.prompt_tokens if usage else None, reason)


def api_message(err: Any) -> str:
    """The ``error.message`` of an OpenAI error reply, else its whole body."""
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    return str(body or err.message)


def prompt_for(url: str, protocol: str, model: str, prompt: str, tokenizer: str | None,
               timeout_s: float = 60.0) -> tuple[str, str | None]:
    """``prompt`` in the chat template of ``tokenizer`` or of the served model's ``tokenizer_dir`` (when that
    directory is on this machine), and a note when it goes out as it is."""
    if tokenizer is None:
        client, _, served = connect(url, protocol, model, timeout_s)
        client.close()
        tokenizer = served.tokenizer_dir if served.tokenizer_dir and Path(served.tokenizer_dir).is_dir() else None
        if tokenizer is None:
            return prompt, (f"no tokenizer found for '{model}' on this machine (pass --tokenizer DIR); the prompt "
                            "was sent without a chat template")
    elif not Path(tokenizer).is_dir():
        raise user_error("--tokenizer", f"{tokenizer} is not a directory", "pass the model's tokenizer directory")
    formatted = chat_prompt(tokenizer, prompt)
    if formatted is None:
        return prompt, f"the tokenizer in {tokenizer} has no chat template; the prompt was sent as it is"
    return formatted, None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-query", description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", help="the question to ask")
    p.add_argument("--url", help="host:port of the server (default 127.0.0.1:8001 for grpc, :8000 for http)")
    p.add_argument("--protocol", "-i", choices=tuple(DEFAULT_PORTS), default="grpc",
                   help="Triton's grpc or http, or openai: llm-launch's OpenAI front end (default :9000)")
    p.add_argument("--openai", dest="protocol", action="store_const", const="openai",
                   help="same as --protocol openai")
    p.add_argument("--api-key-env", default=OPENAI_KEY_ENV, metavar="VAR",
                   help=f"openai: the variable holding the front end's API key (default {OPENAI_KEY_ENV})")
    p.add_argument("--model", "-m", default="llm", help="served model name (default: llm)")
    p.add_argument("--max-tokens", type=int, default=Options.max_tokens)
    p.add_argument("--temperature", type=float, default=Options.temperature, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the answer before TEXT (repeatable)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--tokenizer", help="tokenizer directory whose chat template formats the prompt "
                   "(default: the served model's tokenizer_dir, when it is on this machine)")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without a chat template "
                   "(openai: a completion instead of a chat)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (text, latency, token counts, finish reason, tokens/s)")
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, ask, print; raises LauncherError on user errors; 1 for an empty answer."""
    args = parser().parse_args(argv)
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    options = Options(args.max_tokens, args.temperature, args.top_p, args.top_k, args.stream, stop=tuple(args.stop))
    live = args.stream and not args.json

    def echo(piece: str) -> None:
        print(piece, end="", flush=True)

    if args.protocol == "openai":
        answer = ask_openai(url, args.model, args.prompt, options, chat=not args.raw,
                            api_key=os.environ.get(args.api_key_env), on_piece=echo if live else None,
                            timeout_s=args.timeout)
    else:
        prompt, note = (args.prompt, None) if args.raw else prompt_for(url, args.protocol, args.model, args.prompt,
                                                                       args.tokenizer, args.timeout)
        if note:
            print(f"note: {note}", file=sys.stderr)
        answer = ask(url, args.protocol, args.model, prompt, options, echo if live else None, args.timeout)
    if args.json:
        print(json.dumps({"model": args.model, "prompt": args.prompt, "text": answer.text,
                          "latency_s": answer.latency_s, "tokens": answer.tokens,
                          "num_input_tokens": answer.input_tokens, "num_output_tokens": answer.tokens,
                          "finish_reason": answer.finish_reason, "tokens_per_s": answer.tokens_per_s}))
    else:
        print("" if live else answer.text)
    if not answer.text.strip():
        print(f"error: '{args.model}' returned an empty answer (finish_reason: {answer.finish_reason}); "
              "check the prompt's format (--raw sends it without a chat template)", file=sys.stderr)
        return EMPTY_ANSWER_EXIT
    return 0


def main() -> NoReturn:
    exit_with(run)


if __name__ == "__main__":
    main()
