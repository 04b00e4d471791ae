"""Triton Python-backend model: Triton's vLLM-backend request contract, generated with ``transformers``.

Copied verbatim into the model repository by llm-launch and configured by the ``parameters`` of its
``config.pbtxt`` (model_dir, dtype, device, max_input_len, max_output_len, compile).

The contract is the one of triton-inference-server/vllm_backend (``src/model.py``'s ``auto_complete_config``
and request handling, ``docs/additional_outputs.md``), so a client written for NVIDIA's vLLM backend works here:
decoupled, ``max_batch_size: 0``, every tensor of shape ``[1]``.

- ``text_input``: the prompt, used as it comes (a client applies the chat template, as with vLLM).
- ``stream``: one response per generated token, else one response with the whole answer.
- ``exclude_input_in_output``: by default the prompt is prepended when not streaming, never when streaming;
  ``false`` with streaming is an error.
- ``sampling_parameters``: JSON of ``vllm.SamplingParams`` fields (else the request's parameters); the fields
  this model cannot honour are refused by name. ``structured_outputs`` (json schema, json_object, regex, choice,
  grammar) is enforced by a grammar-constrained logits mask.
- ``return_finish_reason``, ``return_cumulative_logprob``, ``return_logprobs``, ``return_num_input_tokens``,
  ``return_num_output_tokens``: the additional outputs, in the vLLM backend's layout.
- Extension of ours: plain ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` inputs, which win over the JSON.

Batching is continuous (iteration-level): ``execute`` only reads and queues requests. One generation thread
keeps a batch of rows over a slot KV cache (one slot per row, keys and values written at each row's own
column); requests that arrive are prefilled together and join the batch at the next step, rows that finish or
whose client cancelled leave it. With ``compile`` the cache is allocated whole up front and the decode step,
padded to a power-of-two batch over the full cache width, is compiled with CUDA graphs on GPUs.
"""

import locale

locale.setlocale(locale.LC_ALL, "C.UTF-8")  # the stub's embedded Python starts with an ASCII locale

import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import typing  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.cache_utils import Cache, CacheLayerMixin, get_layer_types_and_kwargs  # noqa: E402

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ERROR_PREFIX = "Error generating stream: "  # the vLLM backend's prefix for every failed request
DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default
MAX_LOGPROBS = 20  # vLLM's default max_logprobs
SAMPLING_EPS = 1e-5  # below this temperature vLLM samples greedily
RETURN_FLAGS = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
                "return_num_output_tokens")
PLAIN_INPUTS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
# vllm.SamplingParams' fields (vLLM 0.32) that change nothing in what this model returns.
NO_EFFECT = {"output_kind", "skip_clone", "skip_reading_prefix_cache", "flat_logprobs", "watermarking"}
# The other vllm.SamplingParams fields (vLLM 0.32) this model does not implement.
UNSUPPORTED = {"prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start", "logprob_token_ids",
               "stream_interval", "output_text_buffer_length", "extra_args", "bad_words", "thinking_token_budget",
               "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids"}
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
STRUCTURED_OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")


class RequestError(ValueError):
    """A problem with one request, answered with an error response; the batch carries on."""

    prefix = ERROR_PREFIX


class LoraError(RequestError):
    """LoRA asked of a model without adapters (the vLLM backend answers this one without the prefix)."""

    prefix = ""


def as_bool(value: typing.Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def as_int_list(value: typing.Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise TypeError("must be a list of integers")
    return value


def as_str_list(value: typing.Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("must be a string or a list of strings")
    return value


def as_bias(value: typing.Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise TypeError("must be an object of token id -> bias")
    return {int(token): float(bias) for token, bias in value.items()}


def optional(convert: typing.Callable) -> typing.Callable:
    return lambda value: None if value is None else convert(value)


CONVERTERS: dict[str, typing.Callable] = {
    "n": int, "max_tokens": optional(int), "min_tokens": int, "temperature": float, "top_p": float, "top_k": int,
    "min_p": float, "seed": optional(int), "stop": as_str_list, "stop_token_ids": as_int_list, "ignore_eos": as_bool,
    "include_stop_str_in_output": as_bool, "logprobs": optional(int), "presence_penalty": float,
    "frequency_penalty": float, "repetition_penalty": float, "skip_special_tokens": as_bool,
    "spaces_between_special_tokens": as_bool, "detokenize": as_bool, "logit_bias": optional(as_bias),
    "allowed_token_ids": optional(as_int_list), "structured_outputs": lambda value: value,
}


@dataclass
class Sampling:
    """One request's ``vllm.SamplingParams`` fields that this model implements (vLLM's defaults)."""

    n: int = 1
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list = field(default_factory=list)
    stop_token_ids: list = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    detokenize: bool = True
    logit_bias: dict | None = None
    allowed_token_ids: list | None = None
    structured_outputs: typing.Any = None

    @classmethod
    def from_fields(cls, fields: dict) -> "Sampling":
        values = {}
        for key, value in fields.items():
            if key in NO_EFFECT:
                continue
            if key in UNSUPPORTED:
                raise RequestError(f"sampling_parameters: '{key}' is not supported by the pytorch backend "
                                   f"(it takes {', '.join(sorted(CONVERTERS))})")
            if key not in CONVERTERS:
                raise RequestError(f"sampling_parameters: unknown key '{key}' (not a vllm.SamplingParams field)")
            if value is None and key not in ("max_tokens", "seed", "logprobs", "logit_bias", "allowed_token_ids",
                                             "structured_outputs"):
                continue  # None leaves vLLM's default
            try:
                values[key] = CONVERTERS[key](value)
            except (TypeError, ValueError) as err:
                raise RequestError(f"sampling_parameters: {key}={value!r}: {err}") from err
        sampling = cls(**values)
        sampling.validate()
        return sampling

    def validate(self) -> None:
        """vLLM's own checks, with its messages."""
        checks = [
            (self.n == 1, f"n={self.n}: the pytorch backend returns one sequence per request"),
            (-2.0 <= self.presence_penalty <= 2.0,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}."),
            (-2.0 <= self.frequency_penalty <= 2.0,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}."),
            (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0,
             f"repetition_penalty must be greater than zero, got {self.repetition_penalty}."),
            (math.isfinite(self.temperature), f"temperature must be a finite number, got {self.temperature}."),
            (self.temperature >= 0.0, f"temperature must be non-negative, got {self.temperature}."),
            (self.temperature <= 2.0, f"temperature must be in [0, 2], got {self.temperature}."),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}."),
            (self.top_k >= -1, f"top_k must be 0 (disable), or at least 1, got {self.top_k}."),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}."),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}."),
            (self.min_tokens >= 0, f"min_tokens must be greater than or equal to 0, got {self.min_tokens}."),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}."),
            (self.logprobs is None or self.logprobs >= 0,
             f"logprobs must be non-negative, got {self.logprobs} (the pytorch backend has no -1: all)."),
            (self.logprobs is None or self.logprobs <= MAX_LOGPROBS,
             f"Requested sample logprobs of {self.logprobs}, which is greater than max allowed: {MAX_LOGPROBS}"),
            (all(self.stop), "stop cannot contain an empty string."),
            (self.detokenize, "detokenize=false: the pytorch backend always returns text"),
        ]
        for ok, message in checks:
            if not ok:
                raise RequestError(message)
        if self.temperature < SAMPLING_EPS:  # greedy, as vLLM: the other sampling knobs do nothing
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1


@dataclass
class Job:
    """One request: what it asked for and how far its generation is."""

    prompt: str
    ids: list
    sampling: Sampling
    max_tokens: int
    stream: bool = False
    prepend: bool = True
    returns: frozenset = frozenset()
    sender: typing.Any = None  # the request's response sender; None for warm-up
    grammar: typing.Any = None  # xgrammar GrammarMatcher
    generator: typing.Any = None  # torch.Generator of a seeded request
    plain: bool = True  # greedy with nothing to apply to the logits: argmax is enough
    stop_ids: frozenset = frozenset()  # tokens that end this row (model's end tokens unless ignore_eos)
    masked_ids: list = field(default_factory=list)  # tokens banned until min_tokens (all stop tokens, as vLLM)
    tokens: list = field(default_factory=list)
    start: int = 0  # first KV-cache column of this row (left padding of its prefill before it)
    column: int = 0  # the column the next token's keys and values go to
    logprobs: list = field(default_factory=list)  # one {token: (logprob, rank)} per generated token
    cumulative_logprob: float = 0.0
    output_counts: typing.Any = None  # per-vocabulary counts of generated tokens (penalties)
    prompt_mask: typing.Any = None  # vocabulary mask of the prompt's tokens (repetition penalty)
    bias: typing.Any = None  # additive logits row: logit_bias and allowed_token_ids
    finish: str | None = None
    text: str = ""  # the answer's text so far (cut at a stop string)
    sent_text: str = ""
    sent_tokens: int = 0
    sent_logprobs: int = 0


def scalar(request: typing.Any, name: str, default: typing.Any = None) -> typing.Any:
    """The value of an optional ``[1]`` input, or ``default`` when the request lacks it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def string_tensor(name: str, value: str) -> typing.Any:
    return pb_utils.Tensor(name, np.asarray([value.encode("utf-8")], dtype=np.object_))


def error_response(message: str, code: typing.Any = None) -> typing.Any:
    """An error answer as the vLLM backend sends it (``text_output`` set to a placeholder)."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message=message, code=code)
    return pb_utils.InferenceResponse(output_tensors=[string_tensor("text_output", "N/A")], error=error)


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values, ``[slots, kv_heads, columns, head_dim]``, grown to the cache's capacity."""

    is_compileable = False
    is_sliding = False

    def __init__(self, cache: "SlotCache") -> None:
        super().__init__()
        self.cache = cache

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.resized(None, key_states)
        self.values = self.resized(None, value_states)
        self.is_initialized = True

    def resized(self, old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        rows, columns = self.cache.capacity
        new = like.new_zeros((rows, like.shape[1], columns, like.shape[3]))
        if old is not None:
            new[:old.shape[0], :, :old.shape[2]] = old
        if self.cache.static:
            torch._dynamo.mark_static_address(new)  # compiled steps (CUDA graphs) write it in place
        return new

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        cache = self.cache
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif (self.keys.shape[0], self.keys.shape[2]) != cache.capacity:
            self.keys, self.values = self.resized(self.keys, key_states), self.resized(self.values, value_states)
        if cache.prefill_slots is not None:  # a prefill: its rows start in fresh slots at column 0
            width = key_states.shape[2]
            self.keys[cache.prefill_slots, :, :width] = key_states
            self.values[cache.prefill_slots, :, :width] = value_states
            return key_states, value_states
        rows = key_states.shape[0]  # a decode step: one token per row, each written at its own column
        self.keys[cache.row_index[:rows], :, cache.write_columns] = key_states[:, :, 0]
        self.values[cache.row_index[:rows], :, cache.write_columns] = value_states[:, :, 0]
        return self.keys[:rows, :, cache.low:cache.high], self.values[:rows, :, cache.low:cache.high]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.past + query_length, 0

    def get_seq_length(self) -> int:
        return self.cache.past

    def get_max_length(self) -> int:
        return -1

    def move(self, source: int, target: int, width: int) -> None:
        if self.is_initialized:
            self.keys[target, :, :width] = self.keys[source, :, :width]
            self.values[target, :, :width] = self.values[source, :, :width]


class SlotCache(Cache):
    """The KV cache of the running batch: row ``i`` of the batch lives in slot ``i``.

    Before each forward the engine says what it is: a prefill into ``prefill_slots``, or a decode step that
    writes one column per row (``write_columns``) and attends to columns ``[low, high)``.
    """

    def __init__(self, layers: int, capacity: tuple[int, int], static: bool, device: torch.device) -> None:
        self.capacity, self.static = capacity, static
        self.prefill_slots: torch.Tensor | None = None
        self.write_columns: torch.Tensor | None = None
        self.row_index = torch.arange(capacity[0], device=device)
        self.low = self.high = self.past = 0
        super().__init__(layers=[SlotLayer(self) for _ in range(layers)])

    def reserve(self, rows: int, columns: int, limit: tuple[int, int]) -> None:
        """Grow (by doubling, up to ``limit``) so ``rows`` slots of ``columns`` columns fit."""
        grown = list(self.capacity)
        for axis, need in enumerate((rows, columns)):
            while grown[axis] < need:
                grown[axis] = min(grown[axis] * 2, limit[axis])
        if tuple(grown) != self.capacity:
            self.capacity = tuple(grown)
            self.row_index = torch.arange(grown[0], device=self.row_index.device)

    def move(self, source: int, target: int, width: int) -> None:
        for layer in self.layers:
            layer.move(source, target, width)


def cancelled(job: Job) -> bool:
    """Whether the client of ``job`` cancelled it (the stub refuses to say once a final response is out)."""
    try:
        return job.sender is not None and job.sender.is_cancelled()
    except Exception:
        return False


def next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


class Grammars:
    """Structured outputs with xgrammar: a grammar-constrained mask of the next token's logits.

    xgrammar rather than outlines_core: it is the default structured-output backend of vLLM (0.32), so a
    ``structured_outputs`` request is compiled and enforced the same way on both backends, and it compiles JSON
    schemas, regexes and EBNF grammars into one matcher type with a CPU bitmask kernel.
    """

    def __init__(self, tokenizer: typing.Any, vocab_size: int, stop_ids: list) -> None:
        self.tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, stop_ids
        self.compiler = None
        self.lock = threading.Lock()

    def matcher(self, spec: typing.Any) -> typing.Any:
        """A matcher for one request's ``structured_outputs`` (a JSON string, as the vLLM backend takes, or
        an object), refused with vLLM's messages when it names no constraint or several."""
        import xgrammar as xgr

        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise RequestError(f"sampling_parameters: structured_outputs is not valid JSON: {err}") from err
        if not isinstance(spec, dict):
            raise RequestError("sampling_parameters: structured_outputs must be a JSON object")
        unknown = sorted(set(spec) - set(STRUCTURED_KINDS) - set(STRUCTURED_OPTIONS))
        if unknown:
            raise RequestError(f"sampling_parameters: structured_outputs: unknown key(s) {unknown} "
                               "(not vllm StructuredOutputsParams fields)")
        kinds = [kind for kind in STRUCTURED_KINDS if spec.get(kind) is not None]
        if len(kinds) != 1:
            raise RequestError(("You can only use one kind of structured outputs constraint but multiple are "
                                f"specified: {spec}") if kinds else
                               f"You must use one kind of structured outputs constraint but none are specified: {spec}")
        kind, value = kinds[0], spec[kinds[0]]
        for refused in ("structural_tag", "whitespace_pattern"):
            if spec.get(refused) is not None:
                raise RequestError(f"sampling_parameters: structured_outputs.{refused} is not supported by the "
                                   "pytorch backend (it takes json, json_object, regex, choice, grammar)")
        compact = bool(spec.get("disable_any_whitespace"))
        with self.lock:
            if self.compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self.stop_ids)
                self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        try:
            if kind in ("json", "json_object"):
                schema = {"type": "object"} if kind == "json_object" else value
                schema = json.loads(schema) if isinstance(schema, str) else schema
                if spec.get("disable_additional_properties"):
                    schema = closed_objects(schema)
                compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=not compact,
                                                             separators=(",", ":") if compact else None)
            elif kind == "regex":
                compiled = self.compiler.compile_regex(value)
            elif kind == "choice":
                compiled = self.compiler.compile_grammar(choice_grammar(value))
            else:
                compiled = self.compiler.compile_grammar(value)
        except (RuntimeError, ValueError, TypeError) as err:
            raise RequestError(f"sampling_parameters: structured_outputs.{kind}: {err}") from err
        return xgr.GrammarMatcher(compiled)


def closed_objects(schema: typing.Any) -> typing.Any:
    """The schema with ``additionalProperties: false`` on every object that does not say (vLLM's option)."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: closed_objects(value) for key, value in schema.items()}
    if closed.get("type") == "object" or "properties" in closed:
        closed.setdefault("additionalProperties", False)
    return closed


def choice_grammar(choices: typing.Any) -> str:
    """An EBNF grammar that matches exactly one of ``choices``."""
    if not isinstance(choices, list) or not choices or not all(isinstance(item, str) for item in choices):
        raise ValueError("must be a non-empty list of strings")
    return "root ::= " + " | ".join(json.dumps(item) for item in choices)


class Engine:
    """The generation loop: continuous batching over a :class:`SlotCache`, on its own thread."""

    def __init__(self, owner: "TritonPythonModel", compile_step: bool) -> None:
        self.owner = owner
        self.model, self.tokenizer, self.device = owner.model, owner.decoder, owner.device
        self.max_rows, self.max_columns = owner.max_batch_size, owner.max_input_len + owner.max_output_len
        self.compiled = compile_step
        layers = owner.model.config.get_text_config(decoder=True).num_hidden_layers
        capacity = (self.max_rows, self.max_columns) if compile_step else (1, min(64, self.max_columns))
        self.cache = SlotCache(layers, capacity, compile_step, self.device)
        self.decode_step = self.forward_step
        if compile_step and self.device.type == "cuda":
            self.decode_step = torch.compile(self.forward_step, mode="reduce-overhead", fullgraph=True)
        self.rows: list[Job] = []
        self.waiting: list[Job] = []
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------ threads
    def start(self) -> None:
        self.threads = [threading.Thread(target=self.loop, name="pytorch-generate", daemon=True),
                        threading.Thread(target=self.send_loop, name="pytorch-respond", daemon=True)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.inbox.put(None)
        self.threads[0].join()
        self.outbox.put(None)
        self.threads[1].join()

    def loop(self) -> None:
        while not self.stopping:
            if not self.rows and not self.waiting:
                self.take(self.inbox.get())
            self.step()
        for job in self.rows + self.waiting:
            self.fail(job, "the model is being unloaded")

    def take(self, job: Job | None) -> None:
        if job is None:
            self.stopping = True
        else:
            self.waiting.append(job)

    def send_loop(self) -> None:
        """Responses go out on their own thread, so generation keeps going while the stub ships them."""
        while (item := self.outbox.get()) is not None:
            sender, response, flags = item
            try:
                sender.send(response, flags=flags)
            except Exception as err:  # a client that went away must not stop the others' answers
                pb_utils.Logger.log_error(f"[pytorch] sending a response failed: {err}")

    def send(self, job: Job, response: typing.Any, final: bool) -> None:
        if job.sender is not None:
            self.outbox.put((job.sender, response, FINAL if final else 0))

    def fail(self, job: Job, message: str) -> None:
        self.send(job, error_response(ERROR_PREFIX + message), final=True)

    # ---------------------------------------------------------------------------------------- the loop
    def run(self, jobs: list[Job]) -> None:
        """Generate ``jobs`` to the end on the calling thread (warm-up; the loop thread is not running)."""
        self.waiting.extend(jobs)
        while self.rows or self.waiting:
            self.step()

    def step(self) -> None:
        """One iteration: drop cancelled rows, prefill arrivals, then one decode step for every row."""
        try:
            while True:
                self.take(self.inbox.get_nowait())
        except queue.Empty:
            pass
        try:
            self.drop_cancelled()
            with torch.inference_mode():
                self.admit()
                if self.rows:
                    self.decode()
        except Exception as err:  # every row gets the error; the next requests start from a fresh cache
            pb_utils.Logger.log_error(f"[pytorch] generation failed: {err!r}")
            for job in self.rows:
                self.fail(job, f"generation failed: {type(err).__name__}: {err}")
            self.rows = []
            self.cache = SlotCache(len(self.cache.layers), self.cache.capacity, self.compiled, self.device)

    def drop_cancelled(self) -> None:
        for job in [job for job in self.rows + self.waiting if cancelled(job)]:
            pb_utils.Logger.log_info("[pytorch] Cancelling the request")
            if job in self.waiting:
                self.waiting.remove(job)
            else:
                self.remove(job)
            pb_utils.Logger.log_info("[pytorch] Successfully cancelled the request")
            self.send(job, error_response("Request was cancelled", pb_utils.TritonError.CANCELLED), final=True)

    def masks(self, mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, rows: int) -> typing.Any:
        """The attention mask(s) of one forward: ``mask`` (bool ``[rows, 1, queries, keys]``, None: causal over
        ``query``/``key`` columns) as it is; for sliding-window layers also one that hides keys ``window`` columns
        or more behind their query (one mask per layer type, as transformers takes them); additive for eager
        attention."""
        window, additive = self.owner.sliding_window, self.owner.additive_masks
        if not window and not additive:
            return mask
        full = mask if mask is not None else (key <= query).expand(rows, 1, query.shape[2], key.shape[3])
        kinds = {"full_attention": full.to(self.device)}
        if window:
            kinds["sliding_attention"] = (full & (query - key < window)).to(self.device)
        if additive:
            dtype = self.model.dtype
            kinds = {kind: torch.zeros(m.shape, dtype=dtype, device=self.device).masked_fill(
                ~m, torch.finfo(dtype).min) for kind, m in kinds.items()}
        return kinds if window else kinds["full_attention"]

    def admit(self) -> None:
        """Prefill the waiting requests that fit (left-padded together) and add them to the batch."""
        free = self.max_rows - len(self.rows)
        if not self.waiting or free <= 0:
            return
        jobs, self.waiting = self.waiting[:free], self.waiting[free:]
        width = max(len(job.ids) for job in jobs)
        first = len(self.rows)
        columns = max(width + job.max_tokens for job in jobs)
        if not self.compiled:
            self.cache.reserve(first + len(jobs), max([columns] + [job.column + 1 for job in self.rows]),
                               (self.max_rows, self.max_columns))
        ids = torch.full((len(jobs), width), self.owner.pad_id, dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.ids):] = torch.tensor(job.ids)
            job.start, job.column = width - len(job.ids), width
        mask = None
        positions = torch.arange(width).expand(len(jobs), width)
        if any(job.start for job in jobs):
            valid = torch.arange(width)[None, :] >= torch.tensor([job.start for job in jobs])[:, None]
            positions = (valid.cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            # padding queries attend to themselves only, so no row is all masked (NaNs in padded rows)
            mask = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool)[None]
            mask = mask[:, None].to(self.device)
        columns_index = torch.arange(width)
        mask = self.masks(mask, columns_index[None, None, :, None], columns_index[None, None, None, :], len(jobs))
        self.rows.extend(jobs)  # slots first.. (a failing prefill answers them with the batch's error)
        cache = self.cache
        cache.prefill_slots = torch.arange(first, first + len(jobs), device=self.device)
        cache.past = 0
        try:
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask,
                                position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
        finally:
            cache.prefill_slots = None
        self.advance(jobs, logits)

    def decode(self) -> None:
        """One token for every row, each at its own position and cache column."""
        rows = self.rows
        columns = [job.column for job in rows]
        starts = [job.start for job in rows]
        tokens = [job.tokens[-1] for job in rows]
        positions = [job.column - job.start for job in rows]
        count = len(rows)
        if self.compiled:  # fixed shapes: rows padded to a power of two, attention over the whole cache
            count = min(next_power_of_two(count), self.max_rows)
            idle = count - len(rows)
            last = self.max_columns - 1
            columns, starts = columns + [last] * idle, starts + [last] * idle
            tokens, positions = tokens + [self.owner.pad_id] * idle, positions + [0] * idle
            low, high = 0, self.max_columns
        else:
            low, high = min(starts), max(columns) + 1
        column_index = torch.arange(low, high)
        start, column = torch.tensor(starts), torch.tensor(columns)
        mask = None
        if self.compiled or len(rows) > 1:
            mask = ((column_index[None] >= start[:, None]) & (column_index[None] <= column[:, None]))[:, None, None]
            mask = mask.to(self.device)
        mask = self.masks(mask, column[:, None, None, None], column_index[None, None, None, :], count)
        cache = self.cache
        cache.write_columns = column.to(self.device)
        cache.low, cache.high, cache.past = low, high, high - low - 1
        token = torch.tensor(tokens, device=self.device)[:, None]
        position = torch.tensor(positions, device=self.device)[:, None]
        logits = self.decode_step(token, mask, position)[:len(rows)]
        for job in rows:
            job.column += 1
        self.advance(list(rows), logits)

    def forward_step(self, token: torch.Tensor, mask: typing.Any, position: torch.Tensor) -> torch.Tensor:
        """The model over one token per row (compiled with CUDA graphs on GPUs in compile mode)."""
        return self.model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=self.cache,
                          use_cache=True).logits[:, -1]

    def advance(self, jobs: list[Job], logits: torch.Tensor) -> None:
        """Pick each row's next token, then answer and retire the rows that are done."""
        for job, token in zip(jobs, self.choose(jobs, logits), strict=True):
            job.tokens.append(token)
            if job.output_counts is not None:
                job.output_counts[token] += 1
            if job.grammar is not None:
                job.grammar.accept_token(token)
            self.check_finish(job, token)
            if job.stream or job.finish:
                self.answer(job)
            if job.finish:
                self.remove(job)

    def remove(self, job: Job) -> None:
        """Drop a row; the batch's last row moves into its slot (rows stay a prefix of the slots)."""
        index = self.rows.index(job)
        last = len(self.rows) - 1
        if index != last:
            moved = self.rows[last]
            self.cache.move(last, index, moved.column)
            self.rows[index] = moved
        self.rows.pop()

    # ------------------------------------------------------------------------------------- sampling
    def choose(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """The next token of each row, as vLLM's sampler picks it (penalties, masks, temperature, top-k/p)."""
        if all(job.plain and len(job.tokens) >= job.sampling.min_tokens for job in jobs):
            return logits.argmax(-1).tolist()
        logits = logits.float()
        wanted = [i for i, job in enumerate(jobs) if job.sampling.logprobs is not None]
        raw = torch.log_softmax(logits[wanted], -1) if wanted else None  # vLLM: raw logprobs, before processing
        for i, job in enumerate(jobs):
            self.process(job, logits[i])
        chosen = logits.argmax(-1)
        sampled = [i for i, job in enumerate(jobs) if not job.sampling.greedy]
        if sampled:
            chosen[sampled] = self.sample(logits[sampled], [jobs[i] for i in sampled])
        tokens = chosen.tolist()
        for k, i in enumerate(wanted):
            self.record_logprobs(jobs[i], raw[k], tokens[i])
        return tokens

    def process(self, job: Job, row: torch.Tensor) -> None:
        """Apply to one row of logits, in place, what its request asks before sampling."""
        sampling = job.sampling
        if job.bias is not None:
            row += job.bias
        if len(job.tokens) < sampling.min_tokens and job.masked_ids:
            row[job.masked_ids] = float("-inf")
        if sampling.penalized:
            counts = job.output_counts
            if sampling.repetition_penalty != 1:
                seen = job.prompt_mask | (counts > 0)
                penalized = torch.where(row > 0, row / sampling.repetition_penalty, row * sampling.repetition_penalty)
                row.copy_(torch.where(seen, penalized, row))
            row -= sampling.frequency_penalty * counts + sampling.presence_penalty * (counts > 0)
        if job.grammar is not None:
            import xgrammar as xgr

            bitmask = xgr.allocate_token_bitmask(1, row.shape[-1])
            job.grammar.fill_next_token_bitmask(bitmask)
            view = row[None]
            xgr.apply_token_bitmask_inplace(view, bitmask.to(row.device))

    def sample(self, logits: torch.Tensor, jobs: list[Job]) -> torch.Tensor:
        """Random sampling for rows with a temperature: min-p, then top-k and top-p, then a draw."""
        settings = [job.sampling for job in jobs]
        logits = logits / torch.tensor([s.temperature for s in settings], device=logits.device)[:, None]
        vocab = logits.shape[-1]
        min_p = torch.tensor([s.min_p for s in settings], device=logits.device)[:, None]
        if bool((min_p > 0).any()):
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, float("-inf"))
        top_k = torch.tensor([s.top_k if s.top_k > 0 else vocab for s in settings], device=logits.device)[:, None]
        top_p = torch.tensor([s.top_p for s in settings], device=logits.device)[:, None]
        if bool((top_k < vocab).any() or (top_p < 1).any()):
            ordered, order = logits.sort(-1, descending=True)
            ordered = ordered.masked_fill(torch.arange(vocab, device=logits.device)[None] >= top_k, float("-inf"))
            probs = ordered.softmax(-1)
            ordered = ordered.masked_fill(probs.cumsum(-1) - probs > top_p, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
        probs = logits.softmax(-1)
        noise = torch.empty_like(probs).exponential_()
        for i, job in enumerate(jobs):
            if job.generator is not None:  # a seeded request draws from its own stream
                noise[i].exponential_(generator=job.generator)
        return (probs / noise).argmax(-1)

    def record_logprobs(self, job: Job, logprobs: torch.Tensor, token: int) -> None:
        chosen = float(logprobs[token])
        entry = {token: (chosen, int((logprobs >= chosen).sum()))}
        if job.sampling.logprobs:
            values, ids = logprobs.topk(job.sampling.logprobs)
            for rank, (value, top) in enumerate(zip(values.tolist(), ids.tolist(), strict=True), start=1):
                entry[top] = (value, rank)
        job.logprobs.append(entry)
        job.cumulative_logprob += chosen

    # ------------------------------------------------------------------------------------- answers
    def check_finish(self, job: Job, token: int) -> None:
        """vLLM's order: a stop token, then the length limit; stop strings are found in the text."""
        stopped = token in job.stop_ids and len(job.tokens) >= job.sampling.min_tokens
        if stopped or (job.grammar is not None and job.grammar.is_terminated()):
            job.finish = "stop"
        elif len(job.tokens) >= job.max_tokens:
            job.finish = "length"
        if job.sampling.stop or job.stream or job.finish:
            job.text = self.decode_text(job)

    def decode_text(self, job: Job) -> str:
        sampling = job.sampling
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=sampling.skip_special_tokens,
                                     spaces_between_special_tokens=sampling.spaces_between_special_tokens)
        found = [(text.find(stop, max(len(job.text) - len(stop), 0)), stop) for stop in sampling.stop]
        found = [(at, stop) for at, stop in found if at >= 0]
        if found and len(job.tokens) >= sampling.min_tokens:
            at, stop = min(found)
            job.finish = "stop"
            return text[:at + (len(stop) if sampling.include_stop_str_in_output else 0)]
        return text

    def answer(self, job: Job) -> None:
        """Stream the text since the last response, or send the whole answer when the row finishes."""
        if job.sender is None:  # warm-up: nobody to answer
            return
        final = job.finish is not None
        if job.stream:
            hold = 0 if final else max([len(stop) - 1 for stop in job.sampling.stop] + [0])
            end = len(job.text) - hold
            if not final and job.text[:end].endswith("\ufffd"):  # an incomplete character: wait for the rest
                end = len(job.text[:end].rstrip("\ufffd"))
            end = max(end, len(job.sent_text))
            text = job.text[len(job.sent_text):end]
            job.sent_text = job.text[:end]
        else:
            text = (job.prompt if job.prepend else "") + job.text
        self.send(job, self.response(job, text), final)

    def response(self, job: Job, text: str) -> typing.Any:
        outputs = [string_tensor("text_output", text)]
        if "return_finish_reason" in job.returns:
            outputs.append(string_tensor("finish_reason", str(job.finish)))
        if "return_cumulative_logprob" in job.returns:
            value = job.cumulative_logprob if job.sampling.logprobs is not None else float("nan")
            outputs.append(pb_utils.Tensor("cumulative_logprob", np.asarray([value], dtype=np.float32)))
        if "return_logprobs" in job.returns:
            outputs.append(string_tensor("logprobs", self.logprobs_json(job)))
        if "return_num_input_tokens" in job.returns:
            outputs.append(pb_utils.Tensor("num_input_tokens", np.asarray(len(job.ids), dtype=np.uint32)))
        if "return_num_output_tokens" in job.returns:
            count = len(job.tokens) - job.sent_tokens
            outputs.append(pb_utils.Tensor("num_output_tokens", np.asarray([count], dtype=np.uint32)))
        job.sent_tokens = len(job.tokens)
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def logprobs_json(self, job: Job) -> str:
        """The logprobs of the tokens since the last response: ``[{token_id: {logprob, rank, decoded_token}}]``."""
        if job.sampling.logprobs is None:
            return "null"
        new, job.sent_logprobs = job.logprobs[job.sent_logprobs:], len(job.logprobs)
        return json.dumps([{token: {"logprob": logprob, "rank": rank, "decoded_token": self.piece(token)}
                            for token, (logprob, rank) in entry.items()} for entry in new])

    def piece(self, token: int) -> str:
        """One token as text, as vLLM shows it in logprobs (SentencePiece's leading space kept)."""
        text = self.tokenizer.decode([token])
        raw = self.tokenizer.convert_ids_to_tokens(token) or ""
        return " " + text if raw.startswith("\u2581") and not text.startswith(" ") else text


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the pytorch model needs 'model_transaction_policy "
                                                "{ decoupled: true }' (the vLLM-backend contract)")
        self.name = args.get("model_name", config.get("name", "llm"))
        self.max_input_len = int(params["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.max_batch_size = int(params["max_batch_size"])
        self.device = torch.device("cpu")
        if params["device"] == "cuda":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)  # this stub process serves one GPU: CUDA graphs and syncs use it
        else:
            instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // instances))
        # Two tokenizers: execute() encodes on the stub's thread while the generation thread decodes.
        trust = params.get("trust_remote_code") == "true"  # only when the spec sets model.trust_remote_code
        self.encoder = AutoTokenizer.from_pretrained(params["model_dir"], trust_remote_code=trust)
        self.decoder = AutoTokenizer.from_pretrained(params["model_dir"], trust_remote_code=trust)
        config = AutoConfig.from_pretrained(params["model_dir"], trust_remote_code=trust)
        text_config = config.get_text_config(decoder=True)
        # SDPA cannot soft-cap attention logits (Gemma 2): those models run transformers' eager attention
        eager = getattr(text_config, "attn_logit_softcapping", None) is not None
        self.model = AutoModelForCausalLM.from_pretrained(
            params["model_dir"], dtype=getattr(torch, params["dtype"]), trust_remote_code=trust,
            attn_implementation="eager" if eager else "sdpa",
        ).to(self.device).eval()
        layer_types, _ = get_layer_types_and_kwargs(text_config)
        if set(layer_types) - {"full_attention", "sliding_attention"}:
            raise pb_utils.TritonModelException(f"{params['model_dir']}: layer types {sorted(set(layer_types))}; "
                                                "the pytorch backend's batching serves full and sliding-window "
                                                "attention only")
        self.sliding_window = text_config.sliding_window if "sliding_attention" in layer_types else None
        self.additive_masks = eager  # eager attention adds its mask to the scores
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = frozenset(i for i in [*eos, self.encoder.eos_token_id] if i is not None)
        pad = self.encoder.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.grammars = Grammars(self.encoder, self.vocab_size, sorted(self.eos_ids))
        self.engine = Engine(self, params["compile"] == "true")
        self.warm_up()
        self.engine.start()

    def warm_up(self) -> None:
        """Generate once before the server reports ready (compile mode compiles every batch bucket here).
        Three tokens: two decode steps, so CUDA graphs are recorded here too, not in a request."""
        buckets = [1]
        if self.engine.compiled:
            buckets = sorted({min(next_power_of_two(rows), self.max_batch_size)
                              for rows in range(1, self.max_batch_size + 1)})
        for rows in buckets:
            self.engine.run([self.job("Hello", {"max_tokens": 3, "temperature": 0, "ignore_eos": True})
                             for _ in range(rows)])

    def job(self, prompt: str, fields: dict, **extra: typing.Any) -> Job:
        """A job for ``prompt`` with ``fields`` of ``vllm.SamplingParams``; RequestError when out of bounds."""
        sampling = Sampling.from_fields(fields)
        if not prompt:
            raise RequestError("The decoder prompt cannot be empty")
        ids = self.encoder(prompt)["input_ids"]
        if not ids:
            raise RequestError("The decoder prompt cannot be empty")
        if len(ids) > self.max_input_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model takes at most {self.max_input_len} "
                               "(model.max_input_len)")
        max_tokens = self.max_output_len if sampling.max_tokens is None else sampling.max_tokens
        if max_tokens > self.max_output_len:
            raise RequestError(f"max_tokens={max_tokens}: this model generates at most {self.max_output_len} "
                               "tokens per request (model.max_output_len)")
        job = Job(prompt, ids, sampling, max_tokens, **extra)
        stops = set(sampling.stop_token_ids)
        job.stop_ids = frozenset(stops if sampling.ignore_eos else stops | self.eos_ids)
        job.masked_ids = sorted(stops | self.eos_ids) if sampling.min_tokens else []
        if sampling.structured_outputs is not None:
            job.grammar = self.grammars.matcher(sampling.structured_outputs)
        if sampling.seed is not None:
            job.generator = torch.Generator(self.device).manual_seed(sampling.seed)
        if sampling.penalized:
            job.output_counts = torch.zeros(self.vocab_size, device=self.device)
            job.prompt_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            job.prompt_mask[ids] = True
        if sampling.logit_bias or sampling.allowed_token_ids is not None:
            job.bias = self.bias_row(sampling)
        job.plain = (sampling.greedy and sampling.logprobs is None and not sampling.penalized and job.bias is None
                     and job.grammar is None)
        return job

    def bias_row(self, sampling: Sampling) -> torch.Tensor:
        """logit_bias and allowed_token_ids as one additive row of logits."""
        named = list(sampling.logit_bias or {}) + list(sampling.allowed_token_ids or [])
        if any(not 0 <= token < self.vocab_size for token in named):
            raise RequestError(f"token ids in logit_bias/allowed_token_ids must be in [0, {self.vocab_size})")
        row = torch.zeros(self.vocab_size, device=self.device)
        if sampling.allowed_token_ids is not None:
            row.fill_(float("-inf"))
            row[sampling.allowed_token_ids] = 0.0
        for token, bias in (sampling.logit_bias or {}).items():
            row[token] += bias
        return row

    def parse(self, request: typing.Any, sender: typing.Any) -> Job:
        """Read one request as the vLLM backend does; RequestError for what it would refuse."""
        if pb_utils.get_input_tensor_by_name(request, "embedding_request") is not None:
            raise RequestError(f"Model {self.name} does not support 'embed' request")
        if pb_utils.get_input_tensor_by_name(request, "image") is not None:
            raise RequestError("the 'image' input is not supported: the pytorch backend serves text models")
        prompt = scalar(request, "text_input")
        if prompt is None:
            raise RequestError("text_input is missing: send the prompt as a string of shape [1]")
        stream = bool(scalar(request, "stream", False))
        exclude = scalar(request, "exclude_input_in_output")
        prepend = not exclude if exclude is not None else not stream
        if prepend and stream:
            raise RequestError("When streaming, `exclude_input_in_output` = False is not allowed.")
        raw = scalar(request, "sampling_parameters")
        raw = request.parameters() if raw is None else raw
        try:
            fields = json.loads(raw or "{}")
        except json.JSONDecodeError as err:
            raise RequestError(f"sampling_parameters is not valid JSON: {err}") from err
        if not isinstance(fields, dict):
            raise RequestError("sampling_parameters must be a JSON object of vllm.SamplingParams fields")
        if fields.pop("lora_name", None) is not None:
            raise LoraError("LoRA feature is not enabled.")
        for name, key in PLAIN_INPUTS.items():
            value = scalar(request, name)
            if value is not None:
                fields[key] = value
        returns = frozenset(flag for flag in RETURN_FLAGS if scalar(request, flag, False))
        return self.job(prompt, fields, stream=stream, prepend=prepend, returns=returns, sender=sender)

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self.parse(request, sender)
            except RequestError as err:
                pb_utils.Logger.log_error(f"[pytorch] refused a request: {err}")
                sender.send(error_response(err.prefix + str(err)), flags=FINAL)
                continue
            self.engine.inbox.put(job)
        return None

    def finalize(self) -> None:
        self.engine.stop()
        self.model = None
