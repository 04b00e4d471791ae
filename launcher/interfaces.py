"""The request interfaces of LLMs served by Triton, read from the served model's config.

Three interfaces exist behind llm-launch's backends:

- ``vllm``: Triton's vLLM-backend contract (``text_input``, ``stream``, ``sampling_parameters`` JSON of
  ``vllm.SamplingParams`` fields, ``exclude_input_in_output``, ``return_*`` flags and the additional outputs
  ``finish_reason``, ``num_input_tokens``, ``num_output_tokens``, ...): NVIDIA's vLLM backend, our ``vllm``
  backend and our pytorch backend.
- ``llmapi``: TensorRT-LLM's llmapi model (``streaming``, ``sampling_param_*`` inputs).
- ``ensemble``: TensorRT-LLM's legacy ``inflight_batcher_llm`` ensemble (plain ``max_tokens``, ``temperature``,
  ``stream``, ...).

This module maps one prompt and its sampling options onto the inputs a model declares and reads its
responses back; it opens no connection itself (``launcher.query`` is the CLI over it, and an OpenAI front end
can drive it from asyncio). The prompt goes in as text: chat templating is the client's, done the same way
for every backend by :func:`chat_prompt`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from launcher.errors import user_error

VLLM, LLMAPI, ENSEMBLE = "vllm", "llmapi", "ensemble"
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
               "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32,
               "TYPE_FP64": np.float64}
# Outputs read back when a model declares them (the vLLM backend's additional outputs and their flags).
READ_OUTPUTS = ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens")
RETURN_FLAGS = {"finish_reason": "return_finish_reason", "num_input_tokens": "return_num_input_tokens",
                "num_output_tokens": "return_num_output_tokens"}


@dataclass(frozen=True)
class Options:
    """What to ask for; ``None`` leaves the server's default. ``sampling`` adds ``vllm.SamplingParams``
    fields (``stop``, ``seed``, ``structured_outputs``, ...) for models of the vLLM interface."""

    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)

    def common(self) -> dict[str, Any]:
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k}
        return {key: value for key, value in values.items() if value is not None}


@dataclass
class Piece:
    """What one response carries (``None`` where the model does not say)."""

    text: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class Completion:
    """A whole answer, gathered from one or more responses."""

    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def add(self, piece: Piece) -> None:
        self.text += piece.text
        if piece.finish_reason not in (None, "None"):  # the vLLM backend sends "None" until the last one
            self.finish_reason = piece.finish_reason
        if piece.input_tokens is not None:
            self.input_tokens = piece.input_tokens
        if piece.output_tokens is not None:
            self.output_tokens = (self.output_tokens or 0) + piece.output_tokens


@dataclass(frozen=True)
class ServedModel:
    """A served model's interface: inputs (name -> (Triton type, shape of one request)), outputs, parameters."""

    name: str
    kind: str
    inputs: dict[str, tuple[str, list[int]]]
    outputs: tuple[str, ...]
    decoupled: bool
    parameters: dict[str, str]

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ServedModel:
        """From the model config as Triton reports it (HTTP JSON, or gRPC ``as_json`` unwrapped)."""
        batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
        inputs = {
            item["name"]: (item["data_type"], batch + [max(int(d), 1) for d in item.get("dims", [1])])
            for item in config.get("input", [])
        }
        if "text_input" not in inputs:
            raise user_error("--model", f"'{name}' takes no text_input; it is not a text-generation model",
                             "pick the model that serves the LLM (llm-launch's model.served_name)")
        outputs = tuple(item["name"] for item in config.get("output", []) if item["name"] in READ_OUTPUTS)
        decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        if "sampling_parameters" in inputs:
            kind = VLLM
        elif any(item.startswith("sampling_param_") for item in inputs):
            kind = LLMAPI
        else:
            kind = ENSEMBLE
        return cls(name, kind, inputs, outputs, decoupled, parameters)

    @property
    def tokenizer_dir(self) -> str | None:
        """The tokenizer directory the deployment names (``tokenizer_dir`` parameter), if any."""
        return self.parameters.get("tokenizer_dir") or None

    def values(self, prompt: str, options: Options) -> dict[str, Any]:
        """The request's input values, in the style this model declares (only inputs it has)."""
        streaming = options.stream and self.decoupled
        if self.kind == VLLM:
            style = {"sampling_parameters": json.dumps({**options.common(), **options.sampling}),
                     "stream": streaming, "exclude_input_in_output": True,
                     **{flag: True for output, flag in RETURN_FLAGS.items() if output in self.outputs}}
        elif self.kind == LLMAPI:
            style = {"streaming": streaming, "sampling_param_exclude_input_from_output": True,
                     **{f"sampling_param_{key}": value for key, value in options.common().items()},
                     "return_finish_reason": True}
        else:
            style = {"stream": streaming, "exclude_input_in_output": True, **options.common()}
        return {name: value for name, value in {"text_input": prompt, **style}.items() if name in self.inputs}

    def tensors(self, module: Any, values: dict[str, Any]) -> list[Any]:
        """``module.InferInput`` tensors (``module``: ``tritonclient.grpc`` or ``tritonclient.http``)."""
        tensors = []
        for name, value in values.items():
            data_type, shape = self.inputs[name]
            item = value.encode() if isinstance(value, str) else value
            array = np.full(shape, item, dtype=NUMPY_TYPES[data_type])
            tensor = module.InferInput(name, shape, data_type.removeprefix("TYPE_").replace("STRING", "BYTES"))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def requested_outputs(self, module: Any) -> list[Any]:
        return [module.InferRequestedOutput(name) for name in self.outputs]


def _first(array: np.ndarray | None) -> Any:
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value.item()


def read_result(result: Any) -> Piece:
    """One response (a tritonclient ``InferResult``) as a :class:`Piece`."""
    text = result.as_numpy("text_output")
    counts = {name: result.as_numpy(name) for name in ("num_input_tokens", "num_output_tokens")}
    return Piece(
        text=b"".join(text.reshape(-1)).decode("utf-8", errors="replace") if text is not None else "",
        finish_reason=_first(result.as_numpy("finish_reason")),
        input_tokens=int(counts["num_input_tokens"].reshape(-1)[0]) if counts["num_input_tokens"] is not None
        else None,
        output_tokens=int(counts["num_output_tokens"].sum()) if counts["num_output_tokens"] is not None else None,
    )


def read_generate_json(reply: dict[str, Any]) -> Piece:
    """One response of Triton's HTTP generate extension (``/generate``, an event of ``/generate_stream``)."""
    def number(name: str) -> int | None:
        value = reply.get(name)
        value = value[0] if isinstance(value, list) and value else value
        return int(value) if isinstance(value, (int, float)) else None

    text = reply.get("text_output", "")
    reason = reply.get("finish_reason")
    return Piece("".join(text) if isinstance(text, list) else str(text),
                 (reason[0] if isinstance(reason, list) and reason else reason) or None,
                 number("num_input_tokens"), number("num_output_tokens"))


@functools.lru_cache(maxsize=4)
def load_tokenizer(directory: str) -> Any:
    """The Hugging Face tokenizer of ``directory`` (loaded once per directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def chat_prompt(directory: str | Path, messages: str | list[dict[str, str]]) -> str | None:
    """``messages`` (one user message, or a chat) formatted with the tokenizer's chat template for a
    generation turn; ``None`` when the tokenizer has no template (a base model: send the text as it is)."""
    tokenizer = load_tokenizer(str(directory))
    if not tokenizer.chat_template:
        return None
    chat = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
