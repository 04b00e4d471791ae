"""``llm-query``: ask a model served by Triton, whichever backend serves it.

The served model's config says which request interface it speaks (``launcher.interfaces``: the vLLM-backend
contract of the pytorch and vllm backends, TensorRT-LLM's llmapi model or its ensemble). The prompt is
formatted with the tokenizer's chat template here, the same way for every backend (``--tokenizer DIR``, else
the directory the deployment names in its ``tokenizer_dir`` parameter; ``--raw`` sends the prompt as it is).
Decoupled (streaming) models are asked over gRPC's bidirectional stream, or Triton's HTTP generate endpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import queue
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import USER_ERROR_EXIT, LauncherError, user_error
from launcher.interfaces import Completion, Options, ServedModel, chat_prompt, read_generate_json, read_result

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
EMPTY_ANSWER_EXIT = 1
__all__ = ["Answer", "Options", "ask", "connect", "main", "prompt_for", "run"]


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
    completion = Completion()
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
                piece = read_result(result)
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
    completion = Completion()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            events = (line[len(b"data:"):] for line in reply if line.startswith(b"data:")) if streaming \
                else [reply.read()]
            for event in events:
                body = json.loads(event)
                if "error" in body:
                    raise user_error("--model", f"'{model.name}' at {url} failed the request: {body['error']}",
                                     "check the prompt and sampling options, and the server's log")
                piece = read_generate_json(body)
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
    p.add_argument("--protocol", "-i", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", "-m", default="llm", help="served model name (default: llm)")
    p.add_argument("--max-tokens", type=int, default=Options.max_tokens)
    p.add_argument("--temperature", type=float, default=Options.temperature, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the answer before TEXT (repeatable; models of the vLLM interface)")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--tokenizer", help="tokenizer directory whose chat template formats the prompt "
                   "(default: the served model's tokenizer_dir, when it is on this machine)")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without a chat template")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (text, latency, token counts, finish reason, tokens/s)")
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, ask, print; raises LauncherError on user errors; 1 for an empty answer."""
    args = parser().parse_args(argv)
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    options = Options(args.max_tokens, args.temperature, args.top_p, args.top_k, args.stream,
                      {"stop": args.stop} if args.stop else {})
    live = args.stream and not args.json
    prompt, note = (args.prompt, None) if args.raw else prompt_for(url, args.protocol, args.model, args.prompt,
                                                                   args.tokenizer, args.timeout)
    if note:
        print(f"note: {note}", file=sys.stderr)

    def echo(piece: str) -> None:
        print(piece, end="", flush=True)

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


def main() -> None:
    try:
        code = run()
    except LauncherError as err:
        for problem in err.problems:
            print(f"error {problem}", file=sys.stderr)
        code = USER_ERROR_EXIT
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
