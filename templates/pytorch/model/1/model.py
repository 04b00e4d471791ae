"""Triton Python-backend model that generates text with Hugging Face ``transformers``.

Copied verbatim into the model repository by llm-launch and configured by the ``parameters`` of
its ``config.pbtxt`` (model_dir, dtype, device, chat_template, max_input_len, max_output_len,
compile). Inputs follow Triton's vLLM backend (``text_input``, ``stream``, ``sampling_parameters``
as JSON, ``exclude_input_in_output``, ``return_num_output_tokens``) plus plain optional
``max_tokens``, ``temperature``, ``top_p`` and ``top_k``, which win over the JSON. The requests of
one dynamic batch are grouped by sampling settings and each group is decoded together, left-padded:
by ``generate``, or with ``compile`` by a static-cache loop whose step is compiled with CUDA graphs.
In decoupled mode (``backend.streaming``) a ``stream`` request gets one response per decoded piece of
text and the last one carries the final flag.
"""

import locale

locale.setlocale(locale.LC_ALL, "C.UTF-8")  # the stub's embedded Python starts with an ASCII locale

import json  # noqa: E402
import os  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer  # noqa: E402

CHECK_EVERY = 16  # compile mode: decode steps between checks whether every row has finished (a GPU sync)
DEFAULT_MAX_TOKENS = 16  # as Triton's vLLM backend (vLLM's SamplingParams)
SAMPLING_KEYS = {"max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "ignore_eos": bool}
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def pick(logits: torch.Tensor, sampling: "Sampling") -> torch.Tensor:
    """The next token of every row: greedy, or sampled with temperature, top-k and top-p."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        ordered = ordered.masked_fill(probs.cumsum(-1) - probs > sampling.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


class RequestError(ValueError):
    """A problem with one request; answered with an error response, the batch carries on."""


@dataclass(frozen=True)
class Sampling:
    """The settings one ``generate`` call shares; requests that agree on them batch together."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    ignore_eos: bool = False  # generate max_tokens whatever the model says (as vLLM's ignore_eos)

    def generation_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": max(self.top_k, 0)}


@dataclass
class Job:
    """One request: its tokens, limits, and what it asked to get back."""

    prompt: str
    input_ids: list
    max_tokens: int
    sampling: Sampling
    stream: bool
    exclude_input: bool
    return_count: bool
    index: int = 0  # position in the batch handed to execute
    sender: object = None  # response sender in decoupled mode
    tokens: list = field(default_factory=list)  # generated so far, without the end-of-sequence token
    done: bool = False
    sent_text: str = ""  # streamed so far
    sent_count: int = 0


def scalar(request, name):
    """The value of an optional ``[1]`` input, or None when the request lacks it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


class RowLimits(StoppingCriteria):
    """Stops each row at its own ``max_tokens`` (generate runs to the group's longest)."""

    def __init__(self, start: int, limits: torch.Tensor) -> None:
        self.start, self.limits = start, limits

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.start) >= self.limits


class Collector(BaseStreamer):
    """Receives each step's new tokens for the whole batch; streams text pieces where asked."""

    def __init__(self, model: "TritonPythonModel", jobs: list) -> None:
        self.model, self.jobs, self.prompt_seen = model, jobs, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt
            self.prompt_seen = True
            return
        for job, token in zip(self.jobs, value.reshape(-1).tolist(), strict=False):  # padding rows come last
            if job.done:
                continue
            if token in self.model.eos_ids and not job.sampling.ignore_eos:
                job.done = True
                continue
            job.tokens.append(token)
            job.done = len(job.tokens) >= job.max_tokens
            if job.stream:
                self.model.send_piece(job, final=False)

    def end(self) -> None:
        for job in self.jobs:
            job.done = True


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.max_input_len = int(params["max_input_len"])
        self.max_output_len = int(params["max_output_len"])
        self.device = torch.device("cpu")
        if params["device"] == "cuda":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)  # this stub process serves one GPU: CUDA graphs and syncs use it
        else:
            instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // instances))
        self.tokenizer = AutoTokenizer.from_pretrained(params["model_dir"])
        self.model = AutoModelForCausalLM.from_pretrained(
            params["model_dir"], dtype=getattr(torch, params["dtype"])).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {i for i in [*eos, self.tokenizer.eos_token_id] if i is not None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self.chat_template = params["chat_template"] == "true"
        if self.chat_template and not self.tokenizer.chat_template:
            raise pb_utils.TritonModelException(
                f"{params['model_dir']}: the tokenizer has no chat template; set model.chat_template=false")
        self.max_batch_size = max(int(config.get("max_batch_size", 1)), 1)
        # backend.compile: requests are padded up to a batch bucket with a static KV cache of fixed shape
        # each, and decoded by static_decode, whose step is compiled (CUDA graphs) once per bucket.
        self.static_caches = {} if params["compile"] == "true" else None
        self.decode_step = self.forward_step
        if self.static_caches is not None and self.device.type == "cuda":
            self.decode_step = torch.compile(self.forward_step, mode="reduce-overhead", fullgraph=True)
        self.warm_up()

    def warm_up(self) -> None:
        """Decode every batch bucket once before the server reports ready (compile mode compiles each here).
        Three tokens: two decode steps, so the CUDA graphs are recorded here too, not in a request."""
        for rows in self.warmup_buckets():
            self.generate([self.parse_text("Hello", 3, Sampling(temperature=0))] * rows)

    def parse_text(self, prompt: str, max_tokens: int, sampling: Sampling, **extra) -> Job:
        if self.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(prompt)["input_ids"]
        if len(ids) > self.max_input_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model takes at most "
                               f"{self.max_input_len} (model.max_input_len)")
        if not 0 < max_tokens <= self.max_output_len:
            raise RequestError(f"max_tokens={max_tokens}: must be between 1 and {self.max_output_len} "
                               "(model.max_output_len)")
        defaults = {"stream": False, "exclude_input": False, "return_count": False}
        return Job(prompt, ids, max_tokens, sampling, **{**defaults, **extra})

    def parse(self, request) -> Job:
        """Read one request's inputs; JSON ``sampling_parameters`` first, plain inputs win."""
        settings = {}
        raw = scalar(request, "sampling_parameters")
        if raw:
            try:
                settings = json.loads(raw)
            except json.JSONDecodeError as err:
                raise RequestError(f"sampling_parameters is not JSON: {err}") from err
            if not isinstance(settings, dict):
                raise RequestError("sampling_parameters must be a JSON object")
            unknown = sorted(set(settings) - set(SAMPLING_KEYS))
            if unknown:
                raise RequestError(f"unsupported sampling_parameters {unknown}; this model takes "
                                   f"{sorted(SAMPLING_KEYS)}")
        for key in SAMPLING_KEYS:
            value = scalar(request, key)
            if value is not None:
                settings[key] = value
        try:
            settings = {key: SAMPLING_KEYS[key](value) for key, value in settings.items()}
        except (TypeError, ValueError) as err:
            raise RequestError(f"bad sampling value: {err}") from err
        stream = bool(scalar(request, "stream"))
        if stream and not self.decoupled:
            raise RequestError("stream=true needs a decoupled model (deploy with backend.streaming=true)")
        max_tokens = settings.pop("max_tokens", DEFAULT_MAX_TOKENS)
        return self.parse_text(scalar(request, "text_input") or "", max_tokens, Sampling(**settings),
                               stream=stream, exclude_input=bool(scalar(request, "exclude_input_in_output")),
                               return_count=bool(scalar(request, "return_num_output_tokens")))

    def execute(self, requests: list) -> list | None:
        jobs, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            sender = request.get_response_sender() if self.decoupled else None
            try:
                job = self.parse(request)
            except RequestError as err:
                error = pb_utils.TritonError(str(err))
                self.reply(index, responses, sender, pb_utils.InferenceResponse(error=error))
                continue
            job.sender, job.index = sender, index
            jobs.append(job)
        groups: dict = {}
        for job in jobs:
            groups.setdefault(job.sampling, []).append(job)
        for group in groups.values():
            try:
                self.generate(group)
            except Exception as err:  # every request of the group gets the error
                error = pb_utils.TritonError(f"generation failed: {type(err).__name__}: {err}")
                for job in group:
                    self.reply(job.index, responses, job.sender, pb_utils.InferenceResponse(error=error))
                continue
            for job in group:
                if job.stream:
                    self.send_piece(job, final=True)
                else:
                    self.reply(job.index, responses, job.sender, self.response(job, self.full_text(job),
                                                                                len(job.tokens)))
        return None if self.decoupled else responses

    def reply(self, index: int, responses: list, sender, response) -> None:
        if sender is not None:
            sender.send(response, flags=FINAL)
        else:
            responses[index] = response

    def warmup_buckets(self) -> list:
        """Batch sizes to run once at start: 1, or every bucket when compiling (so no request waits)."""
        if self.static_caches is None:
            return [1]
        return sorted({self.bucket(rows) for rows in range(1, self.max_batch_size + 1)})

    def bucket(self, rows: int) -> int:
        """The next power of two, capped at max_batch_size: few shapes, so few compiled graphs."""
        return min(1 << (rows - 1).bit_length(), self.max_batch_size)

    def static_cache(self, rows: int):
        """A reusable static KV cache for ``rows`` sequences of the longest allowed length."""
        from transformers import StaticCache

        if rows not in self.static_caches:
            self.static_caches[rows] = StaticCache(config=self.model.config,
                                                   max_cache_len=self.max_input_len + self.max_output_len)
        cache = self.static_caches[rows]
        cache.reset()
        return cache

    def generate(self, jobs: list) -> None:
        """One left-padded batch for requests that share sampling settings."""
        width = max(len(job.input_ids) for job in jobs)
        rows = self.bucket(len(jobs)) if self.static_caches is not None else len(jobs)
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        attention_mask[len(jobs):, -1] = 1  # padding rows attend to one token, so they stay finite
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job.input_ids):] = torch.tensor(job.input_ids)
            attention_mask[row, width - len(job.input_ids):] = 1
        limits = [job.max_tokens for job in jobs] + [1] * (rows - len(jobs))
        streaming = any(job.stream for job in jobs)
        with torch.inference_mode():  # the caches' tensors are created (and reset) in inference mode
            decode = self.hf_generate if self.static_caches is None else self.static_decode
            output = decode(jobs, input_ids.to(self.device), attention_mask.to(self.device), limits, streaming)
        if not streaming:
            for job, row in zip(jobs, output.tolist(), strict=False):  # padding rows come last
                self.take(job, row)

    def hf_generate(self, jobs: list, input_ids, attention_mask, limits: list, streaming: bool):
        """transformers' ``generate``; returns the new tokens of every row."""
        sampling = jobs[0].sampling
        config = GenerationConfig(max_new_tokens=max(limits), pad_token_id=self.pad_id,
                                  eos_token_id=None if sampling.ignore_eos else sorted(self.eos_ids),
                                  **sampling.generation_kwargs())
        # Per-step hooks cost time on every decode step: a streamer only when a request streams,
        # per-row limits only when the rows' max_tokens differ.
        hooks = {"streamer": Collector(self, jobs)} if streaming else {}
        width = input_ids.shape[1]
        if len(set(limits[:len(jobs)])) > 1:
            hooks["stopping_criteria"] = StoppingCriteriaList(
                [RowLimits(width, torch.tensor(limits, device=self.device))])
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                     **hooks)
        return output[:, width:]

    def static_decode(self, jobs: list, input_ids, attention_mask, limits: list, streaming: bool):
        """Compile mode: prefill, then one compiled forward per step over a static KV cache.

        Leaner than ``generate`` (whose per-step Python dominates once CUDA graphs make the model fast):
        tokens stay on the GPU, and the loop checks for the end of every row only every CHECK_EVERY steps.
        """
        rows, width = input_ids.shape
        cache = self.static_cache(rows)
        mask = torch.zeros((rows, self.max_input_len + self.max_output_len), dtype=torch.long, device=self.device)
        mask[:, :width] = attention_mask
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            past_key_values=cache, cache_position=torch.arange(width, device=self.device),
                            use_cache=True).logits[:, -1]
        sampling, steps = jobs[0].sampling, max(limits)
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        limit = torch.tensor(limits, device=self.device)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        output = torch.full((rows, steps), self.pad_id, dtype=torch.long, device=self.device)
        # Contiguous strides whatever the prompt's width: the compiled step guards on strides, and a
        # (rows, 1) slice keeps its parent's, which would recompile the step for every new width.
        position = positions[:, -1:].clone(memory_format=torch.contiguous_format)
        cache_position = torch.full((1,), width, device=self.device)
        collector = Collector(self, jobs) if streaming else None
        if collector is not None:
            collector.prompt_seen = True
        for step in range(steps):
            token = pick(logits, sampling)
            output[:, step] = token
            if collector is not None:
                collector.put(token)
            if not sampling.ignore_eos:
                finished |= torch.isin(token, eos)
            if step + 1 == steps or (step % CHECK_EVERY == CHECK_EVERY - 1
                                     and bool((finished | (limit <= step + 1)).all())):
                break
            mask[:, width + step] = 1
            position += 1
            logits = self.decode_step(token[:, None], mask, position, cache_position, cache)
            cache_position += 1
        return output

    def forward_step(self, token, mask, position, cache_position, cache):
        """One decode step (compiled with CUDA graphs on GPUs in compile mode)."""
        return self.model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                          cache_position=cache_position, use_cache=True).logits[:, -1]

    def take(self, job: Job, row: list) -> None:
        """A finished row's tokens: up to the request's max_tokens, cut before the end-of-sequence token."""
        row = row[:job.max_tokens]
        if not job.sampling.ignore_eos:
            row = next((row[:i] for i, token in enumerate(row) if token in self.eos_ids), row)
        job.tokens = row

    def full_text(self, job: Job) -> str:
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        return text if job.exclude_input else job.prompt + text

    def send_piece(self, job: Job, final: bool) -> None:
        """Stream the text decoded since the last piece (held back while a character is incomplete)."""
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        if not final and (text.endswith("\ufffd") or len(text) == len(job.sent_text)):
            return
        piece, count = text[len(job.sent_text):], len(job.tokens) - job.sent_count
        job.sent_text, job.sent_count = text, len(job.tokens)
        if final and not piece:
            job.sender.send(flags=FINAL)
        else:
            job.sender.send(self.response(job, piece, count), flags=FINAL if final else 0)

    def response(self, job: Job, text: str, count: int):
        outputs = [pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))]
        if job.return_count:
            outputs.append(pb_utils.Tensor("num_output_tokens", np.array([[count]], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def finalize(self) -> None:
        self.model = None
