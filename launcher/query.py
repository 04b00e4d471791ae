"""``llm-query``: ask a model served by Triton, whichever backend serves it.

The served model's config says which request interface it speaks: vLLM-style (``text_input`` +
``sampling_parameters`` JSON + ``stream``; also our pytorch backend), the TensorRT-LLM llmapi model
(``streaming`` + ``sampling_param_*``) or the TensorRT-LLM ensemble (plain ``max_tokens``,
``temperature``, ...). The prompt and sampling options are mapped onto the inputs it declares.
Decoupled (streaming) models are asked over gRPC's bidirectional stream.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from launcher.errors import USER_ERROR_EXIT, LauncherError, user_error

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
               "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32,
               "TYPE_FP64": np.float64}
OUTPUTS = ("text_output", "num_output_tokens")


@dataclass(frozen=True)
class Options:
    """What to ask for; ``None`` leaves the server's default."""

    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float
    tokens: int | None  # generated tokens, where the model reports them

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.latency_s if self.tokens and self.latency_s > 0 else None


@dataclass(frozen=True)
class ModelInterface:
    """The inputs a served model declares (name -> (Triton type, shape of one request))."""

    name: str
    inputs: dict[str, tuple[str, list[int]]]
    outputs: tuple[str, ...]
    decoupled: bool

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ModelInterface:
        batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
        inputs = {
            item["name"]: (item["data_type"], batch + [max(int(d), 1) for d in item.get("dims", [1])])
            for item in config.get("input", [])
        }
        outputs = tuple(item["name"] for item in config.get("output", []) if item["name"] in OUTPUTS)
        decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        return cls(name, inputs, outputs, decoupled)

    def values(self, prompt: str, options: Options) -> dict[str, Any]:
        """The request's input values, in the style this model declares."""
        sampling = {"max_tokens": options.max_tokens, "temperature": options.temperature,
                    "top_p": options.top_p, "top_k": options.top_k}
        sampling = {key: value for key, value in sampling.items() if value is not None}
        if "text_input" not in self.inputs:
            raise user_error("--model", f"'{self.name}' takes no text_input; it is not a text-generation model",
                             "pick the model that serves the LLM (llm-launch's model.served_name)")
        if "sampling_parameters" in self.inputs:  # vLLM backend, our pytorch backend
            style = {"sampling_parameters": json.dumps(sampling)}
        elif any(name.startswith("sampling_param_") for name in self.inputs):  # TensorRT-LLM llmapi
            style = {f"sampling_param_{key}": value for key, value in sampling.items()}
        else:  # TensorRT-LLM ensemble
            style = sampling
        streaming = options.stream and self.decoupled
        common = {"text_input": prompt, "stream": streaming, "streaming": streaming,
                  "exclude_input_in_output": True, "return_num_output_tokens": True}
        return {name: value for name, value in {**common, **style}.items() if name in self.inputs}


def fetch_config(client: Any, model: str) -> dict[str, Any]:
    """The served model's config as a dict (the gRPC JSON form is unwrapped)."""
    config = client.get_model_config(model, **({"as_json": True} if hasattr(client, "start_stream") else {}))
    return config.get("config", config)


def connect(url: str, protocol: str, model: str, timeout_s: float) -> tuple[Any, Any, ModelInterface]:
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
    return client, module, ModelInterface.from_config(model, config)


def build_inputs(module: Any, interface: ModelInterface, values: dict[str, Any]) -> list[Any]:
    inputs = []
    for name, value in values.items():
        data_type, shape = interface.inputs[name]
        array = np.full(shape, value.encode() if isinstance(value, str) else value, dtype=NUMPY_TYPES[data_type])
        tensor = module.InferInput(name, shape, data_type.removeprefix("TYPE_").replace("STRING", "BYTES"))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def read_result(result: Any) -> tuple[str, int | None]:
    """Text and token count of one response."""
    text = result.as_numpy("text_output")
    tokens = result.as_numpy("num_output_tokens")
    piece = b"".join(text.reshape(-1)).decode("utf-8", errors="replace") if text is not None else ""
    return piece, int(tokens.sum()) if tokens is not None else None


def stream(client: Any, module: Any, interface: ModelInterface, inputs: list[Any],
           on_piece: Callable[[str], None] | None, timeout_s: float) -> tuple[str, int | None]:
    """Ask a decoupled model over gRPC's stream; pieces go to ``on_piece`` as they arrive."""
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    pieces, tokens = [], None
    try:
        client.async_stream_infer(interface.name, inputs, enable_empty_final_response=True,
                                  outputs=[module.InferRequestedOutput(name) for name in interface.outputs])
        while True:
            try:
                result, error = responses.get(timeout=timeout_s)
            except queue.Empty:
                raise user_error("--timeout", f"no answer from '{interface.name}' within {timeout_s:g} s",
                                 "raise --timeout") from None
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                piece, count = read_result(result)
                pieces.append(piece)
                tokens = count if tokens is None else tokens + (count or 0)
                if on_piece and piece:
                    on_piece(piece)
            if response.parameters["triton_final_response"].bool_param:
                return "".join(pieces), tokens
    finally:
        client.stop_stream()


def ask(url: str, protocol: str, model: str, prompt: str, options: Options,
        on_piece: Callable[[str], None] | None = None, timeout_s: float = 600.0) -> Answer:
    """Send one prompt to ``model`` at ``url`` and wait for the whole answer."""
    from tritonclient.utils import InferenceServerException

    client, module, interface = connect(url, protocol, model, timeout_s)
    try:
        inputs = build_inputs(module, interface, interface.values(prompt, options))
        start = time.perf_counter()
        if interface.decoupled:
            if protocol != "grpc":
                raise user_error("--protocol", f"'{model}' streams its answers (decoupled); HTTP cannot carry "
                                 "them", "use --protocol grpc with the server's gRPC port")
            text, tokens = stream(client, module, interface, inputs, on_piece, timeout_s)
        else:
            outputs = [module.InferRequestedOutput(name) for name in interface.outputs]
            timeout = {"client_timeout": timeout_s} if protocol == "grpc" else {}  # http: set on the client
            text, tokens = read_result(client.infer(model, inputs, outputs=outputs, **timeout))
        return Answer(text, time.perf_counter() - start, tokens)
    except InferenceServerException as err:
        raise user_error("--model", f"'{model}' at {url} failed the request: {err.message()}",
                         "check the prompt and sampling options, and the server's log") from err
    finally:
        client.close()


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
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated (gRPC)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, latency, tokens/s)")
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, ask, print; raises LauncherError on user errors."""
    args = parser().parse_args(argv)
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    options = Options(args.max_tokens, args.temperature, args.top_p, args.top_k, args.stream)
    live = args.stream and not args.json

    def echo(piece: str) -> None:
        print(piece, end="", flush=True)

    answer = ask(url, args.protocol, args.model, args.prompt, options, echo if live else None, args.timeout)
    if args.json:
        print(json.dumps({"model": args.model, "prompt": args.prompt, **asdict(answer),
                          "tokens_per_s": answer.tokens_per_s}))
    else:
        print("" if live else answer.text)
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
