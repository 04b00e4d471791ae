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
responses back; it opens no connection itself (``launcher.query`` is the CLI over it, ``launcher.frontend``
the OpenAI front end driving it from asyncio). An option a model's interface cannot carry is named by
:meth:`ServedModel.refused`, so a caller can refuse it rather than drop it. The prompt goes in as text: chat
templating is the client's, done the same way for every backend by :func:`chat_prompt`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from launcher.errors import user_error

VLLM, LLMAPI, ENSEMBLE = "vllm", "llmapi", "ensemble"
NUMPY_TYPES = {"TYPE_STRING": np.object_, "TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
               "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32,
               "TYPE_FP64": np.float64}
# Outputs read back when a model declares them (the vLLM backend's additional outputs and their flags).
READ_OUTPUTS = ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens", "logprobs")
RETURN_FLAGS = {"finish_reason": "return_finish_reason", "num_input_tokens": "return_num_input_tokens",
                "num_output_tokens": "return_num_output_tokens", "logprobs": "return_logprobs"}
# The inputs that carry each option on the interfaces of one input per option (the vLLM interface carries
# them all in its sampling_parameters JSON). An option without an input here cannot be asked of that interface.
FIELD_INPUTS = {
    LLMAPI: {"max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
             "top_p": "sampling_param_top_p", "top_k": "sampling_param_top_k", "stop": "sampling_param_stop",
             "seed": "sampling_param_seed", "presence_penalty": "sampling_param_presence_penalty",
             "frequency_penalty": "sampling_param_frequency_penalty"},
    ENSEMBLE: {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
               "stop": "stop_words", "seed": "random_seed", "presence_penalty": "presence_penalty",
               "frequency_penalty": "frequency_penalty", "structured": "guided_decoding_guide_type"},
}
# vLLM StructuredOutputsParams kinds -> the ensemble's guided_decoding_guide_type.
GUIDE_TYPES = {"json": "json_schema", "json_object": "json", "regex": "regex", "grammar": "ebnf_grammar"}


@dataclass(frozen=True)
class Options:
    """What to ask for; ``None`` (or empty) leaves the server's default. ``sampling`` adds more
    ``vllm.SamplingParams`` fields for models of the vLLM interface (other interfaces do not see them).
    ``logprobs``: how many top alternatives to return with each token's logprob (0: the token's only).
    ``structured``: a ``vllm`` StructuredOutputsParams dict (``{"json": schema}``, ``{"json_object": True}``)."""

    max_tokens: int | None = 64
    temperature: float | None = 0.0  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: int | None = None
    structured: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The options that are set, by name (``stop`` as a list)."""
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "stop": list(self.stop) or None, "seed": self.seed,
                  "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                  "logprobs": self.logprobs, "structured": self.structured}
        return {key: value for key, value in values.items() if value is not None}


@dataclass
class Piece:
    """What one response carries (``None`` where the model does not say). ``logprobs``: one
    ``{token id: {"logprob", "rank", "decoded_token"}}`` per generated token, the sampled token first."""

    text: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    logprobs: list[dict[str, dict[str, Any]]] | None = None

    @property
    def final_reason(self) -> str | None:
        """The finish reason, ``None`` while there is none (the vLLM backend sends "None" until the last)."""
        return None if self.finish_reason in (None, "None") else self.finish_reason


@dataclass
class Completion:
    """A whole answer, gathered from one or more responses."""

    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    logprobs: list[dict[str, dict[str, Any]]] | None = None

    def add(self, piece: Piece) -> None:
        self.text += piece.text
        if piece.final_reason is not None:
            self.finish_reason = piece.final_reason
        if piece.logprobs is not None:
            self.logprobs = self.logprobs or []
            self.logprobs.extend(piece.logprobs)
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
    # The tensors of flag inputs (stream, return_*: the same in most requests), built once per client module.
    flags: dict[tuple[str, str, bool], Any] = field(default_factory=dict, compare=False, repr=False)

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

    @property
    def cumulative(self) -> bool:
        """Whether every response carries the whole text so far (the llmapi model's), not only what is new."""
        return self.kind == LLMAPI

    def refused(self, options: Options) -> list[str]:
        """The options set in ``options`` that this model's interface has no way to carry (``sampling``'s
        vLLM fields on the other interfaces among them)."""
        fields = options.fields()
        if self.kind == VLLM:
            return ["logprobs"] if "logprobs" in fields and "logprobs" not in self.outputs else []
        carried = FIELD_INPUTS[self.kind]
        return [name for name in fields if carried.get(name) not in self.inputs] + sorted(options.sampling)

    def wanted(self, options: Options) -> tuple[str, ...]:
        """The outputs to ask for: those read back, logprobs only when asked for."""
        return tuple(name for name in self.outputs if name != "logprobs" or options.logprobs is not None)

    def values(self, prompt: str, options: Options) -> dict[str, Any]:
        """The request's input values, in the style this model declares (only inputs it has)."""
        streaming = options.stream and self.decoupled
        fields = options.fields()
        if self.kind == VLLM:
            structured = fields.pop("structured", None)
            if structured is not None:
                fields["structured_outputs"] = json.dumps(structured)  # a JSON string, as NVIDIA's backend takes
            style = {"sampling_parameters": json.dumps({**fields, **options.sampling}),
                     "stream": streaming, "exclude_input_in_output": True,
                     **{flag: True for output, flag in RETURN_FLAGS.items() if output in self.wanted(options)}}
        elif self.kind == LLMAPI:
            style = {"streaming": streaming, "sampling_param_exclude_input_from_output": True,
                     **self._plain(fields), "return_finish_reason": True}
        else:
            style = {"stream": streaming, "exclude_input_in_output": True, **self._plain(fields)}
        return {name: value for name, value in {"text_input": prompt, **style}.items() if name in self.inputs}

    def _plain(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` as the inputs of one option each (an ensemble's guided decoding takes two)."""
        carried = FIELD_INPUTS[self.kind]
        values = {carried[name]: value for name, value in fields.items() if name in carried and name != "structured"}
        if "structured" in fields and "structured" in carried:
            ((kind, guide),) = fields["structured"].items()
            values["guided_decoding_guide_type"] = GUIDE_TYPES[kind]
            if kind != "json_object":
                values["guided_decoding_guide"] = guide if isinstance(guide, str) else json.dumps(guide)
        return values

    def tensors(self, module: Any, values: dict[str, Any]) -> list[Any]:
        """``module.InferInput`` tensors (``module``: ``tritonclient.grpc`` or ``tritonclient.http``); a list
        value fills the input's last dimension. A flag's tensor is built once and shared: not to be changed."""
        tensors = []
        for name, value in values.items():
            if isinstance(value, bool):
                key = (module.__name__, name, value)
                tensor = self.flags.get(key)
                if tensor is None:
                    tensor = self.flags[key] = self.tensor(module, name, value)
                tensors.append(tensor)
            else:
                tensors.append(self.tensor(module, name, value))
        return tensors

    def tensor(self, module: Any, name: str, value: Any) -> Any:
        data_type, shape = self.inputs[name]
        dtype = NUMPY_TYPES[data_type]
        if isinstance(value, (list, tuple)):
            shape = [*shape[:-1], len(value)]
            array = np.array([item.encode() if isinstance(item, str) else item for item in value],
                             dtype=dtype).reshape(shape)
        else:
            array = np.full(shape, value.encode() if isinstance(value, str) else value, dtype=dtype)
        tensor = module.InferInput(name, shape, data_type.removeprefix("TYPE_").replace("STRING", "BYTES"))
        tensor.set_data_from_numpy(array)
        return tensor

    def requested_outputs(self, module: Any, options: Options | None = None) -> list[Any]:
        return [module.InferRequestedOutput(name) for name in self.wanted(options or Options())]


class Reader:
    """One request's responses as :class:`Piece` s of new text (the llmapi model sends the whole text so far in
    every response: only what follows the text already read is new)."""

    def __init__(self, model: ServedModel) -> None:
        self.cumulative = model.cumulative
        self.seen = ""

    def read(self, result: Any) -> Piece:
        """One gRPC response (a tritonclient ``InferResult``)."""
        return self.new_text(read_result(result))

    def read_json(self, reply: dict[str, Any]) -> Piece:
        """One answer or event of Triton's HTTP generate extension."""
        return self.new_text(read_generate_json(reply))

    def new_text(self, piece: Piece) -> Piece:
        if self.cumulative:
            piece.text, self.seen = piece.text[len(self.seen):], piece.text
        return piece


def _first(array: np.ndarray | None) -> Any:
    if array is None or array.size == 0:
        return None
    return _decoded(array.reshape(-1)[0])


def _decoded(value: Any) -> Any:
    """A tensor element as Python: BYTES elements are ``bytes`` over gRPC and binary HTTP, ``str`` in JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else value.item()


def _outputs(result: Any) -> dict[str, np.ndarray]:
    """The outputs of ``READ_OUTPUTS`` that ``result`` holds, by name: one pass over a gRPC response's raw
    outputs (read once per streamed token), else through ``as_numpy`` (HTTP results, non-raw contents)."""
    response = result.get_response()
    raw = getattr(response, "raw_output_contents", None)
    if raw is None or len(raw) != len(response.outputs):
        return {name: array for name in READ_OUTPUTS if (array := result.as_numpy(name)) is not None}
    found = {}
    for output, data in zip(response.outputs, raw, strict=True):
        if output.name in READ_OUTPUTS:
            found[output.name] = (deserialize_bytes_tensor(data) if output.datatype == "BYTES" else
                                  np.frombuffer(data, dtype=triton_to_np_dtype(output.datatype)))
    return found


def read_result(result: Any) -> Piece:
    """One response (a tritonclient ``InferResult``) as a :class:`Piece`."""
    outputs = _outputs(result)
    text, inputs, generated = (outputs.get(name) for name in ("text_output", "num_input_tokens",
                                                              "num_output_tokens"))
    logprobs = _first(outputs.get("logprobs"))
    return Piece(
        text="".join(_decoded(value) for value in text.reshape(-1)) if text is not None else "",
        finish_reason=_first(outputs.get("finish_reason")),
        input_tokens=int(inputs.reshape(-1)[0]) if inputs is not None and inputs.size else None,
        output_tokens=sum(generated.reshape(-1).tolist()) if generated is not None else None,
        logprobs=json.loads(logprobs) if logprobs else None,  # "null" when the request asked for none
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


def count_tokens(directory: str, text: str) -> int:
    """How many tokens the tokenizer of ``directory`` makes of ``text``, special tokens included (a fast
    tokenizer's Rust encoder asked directly unless its file sets truncation or padding: a third quicker)."""
    tokenizer = load_tokenizer(directory)
    encoder = getattr(tokenizer, "backend_tokenizer", None)
    if encoder is not None and encoder.truncation is None and encoder.padding is None:
        return len(encoder.encode(text))
    return len(tokenizer(text)["input_ids"])


def chat_prompt(directory: str | Path, messages: str | list[dict[str, str]], template: str | None = None) -> str | None:
    """``messages`` (one user message, or a chat) formatted with the tokenizer's chat template (or
    ``template``, a Jinja chat template of its own) for a generation turn; ``None`` when there is no template
    (a base model: send the text as it is)."""
    tokenizer = load_tokenizer(str(directory))
    if not (template or tokenizer.chat_template):
        return None
    chat = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    return tokenizer.apply_chat_template(chat, chat_template=template, tokenize=False, add_generation_prompt=True)
