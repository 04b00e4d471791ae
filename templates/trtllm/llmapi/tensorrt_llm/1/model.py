"""llm-launch's Triton Python-backend model over ``tensorrt_llm.LLM`` (TensorRT-LLM's llmapi contract).

``model.yaml`` beside this file holds the ``LLM`` arguments; its ``triton_config`` stays here
(``decoupled``, ``cancellation_check_period_ms``). Every request becomes a task on one asyncio loop
that runs in a background thread, so ``execute`` returns at once and the LLM batches requests itself.
Inputs: ``text_input``, ``streaming``, any ``sampling_param_<name>`` (passed to ``SamplingParams`` as
``<name>``), ``return_finish_reason`` / ``return_stop_reason`` / ``return_cumulative_logprob``, and
``stop`` (abort the requests that carry the same request id). Outputs: ``text_output`` (the whole text
generated so far, in every streamed response as in the last: upstream's llmapi model sends
``CompletionOutput.text``, which is cumulative) and the optional ``finish_reason``, ``stop_reason``,
``cumulative_logprob``. Error texts are upstream's. A request the client cancels is aborted in the LLM.
Under ``mpirun`` every rank runs this model: rank 0 drives the LLM, the others serve as its workers.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def cancelled() -> object:
    """The CANCELLED error response, worded as upstream words it."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError("Request cancelled by client",
                                                                 pb_utils.TritonError.CANCELLED))


OPTIONAL_OUTPUTS = {
    "return_finish_reason": ("finish_reason", lambda out: out.finish_reason),
    "return_stop_reason": ("stop_reason", lambda out: out.stop_reason),
    "return_cumulative_logprob": ("cumulative_logprob", lambda out: out.cumulative_logprob),
}


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


def _strings(request, name: str) -> list[str] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _mpi_world():
    """``COMM_WORLD`` when this process is one rank of several, else None."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], "model.yaml")
        with open(path) as f:
            engine_args = yaml.safe_load(f)
        triton_config = engine_args.pop("triton_config", {}) or {}
        self.decoupled = bool(triton_config.get("decoupled", False))
        self.check_period_s = float(triton_config.get("cancellation_check_period_ms", 100)) / 1000
        self.llm = None
        comm = _mpi_world()
        if comm is not None and comm.Get_rank() != 0:
            from mpi4py.futures import MPICommExecutor

            with MPICommExecutor(comm):  # a worker of rank 0's LLM until it shuts down
                return
        from tensorrt_llm import LLM, SamplingParams

        if comm is not None:
            from tensorrt_llm.llmapi import MpiCommSession

            engine_args["_mpi_session"] = MpiCommSession(comm=comm, n_workers=comm.Get_size())
        self.sampling_params = SamplingParams
        self.llm = LLM(**engine_args)
        self.running: dict[str, list] = {}  # request id -> generations, for the "stop" input
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmapi-requests", daemon=True)
        self.thread.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)
        return None

    def _parse(self, request) -> tuple[str, dict, bool]:
        prompts = _strings(request, "text_input")
        if not prompts:
            raise pb_utils.TritonModelException("text_input is missing from the request")
        params = {}
        for tensor in request.inputs():
            name = tensor.name()
            if name.startswith("sampling_param_"):
                key = name.removeprefix("sampling_param_")
                params[key] = _strings(request, name) if key == "stop" else _scalar(request, name)
        streaming = bool(_scalar(request, "streaming"))
        if streaming and not self.decoupled:
            raise pb_utils.TritonModelException("Streaming is only supported in decoupled mode.")
        return prompts[0], params, streaming

    def _response(self, request, text: str, output) -> object:
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        for flag, (name, read) in OPTIONAL_OUTPUTS.items():
            if _scalar(request, flag):
                value = read(output)
                dtype = np.float32 if name == "cumulative_logprob" else np.object_
                data = [value if dtype is np.float32 else str(value).encode("utf-8")]
                tensors.append(pb_utils.Tensor(name, np.array(data, dtype=dtype)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    async def _watch(self, request, generation) -> None:
        """Abort ``generation`` as soon as the client cancels ``request``."""
        while not request.is_cancelled():
            await asyncio.sleep(self.check_period_s)
        generation.abort()

    async def _serve(self, request) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        if _scalar(request, "stop"):
            if not request_id:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "A request id must be provided for request cancellation")), flags=FINAL)
                return
            for generation in self.running.pop(request_id, []):
                generation.abort()
            sender.send(cancelled(), flags=FINAL)
            return
        watcher = generation = None
        try:
            prompt, params, streaming = self._parse(request)
            generation = self.llm.generate_async(prompt, self.sampling_params(**params), streaming=streaming)
            self.running.setdefault(request_id, []).append(generation)
            watcher = asyncio.ensure_future(self._watch(request, generation))
            output = None
            async for result in generation:
                output = result.outputs[0]
                if streaming and not request.is_cancelled():
                    sender.send(self._response(request, output.text, output), flags=FINAL if result.finished else 0)
            if request.is_cancelled():
                sender.send(cancelled(), flags=FINAL)
            elif not streaming:
                sender.send(self._response(request, output.text, output), flags=FINAL)
        except Exception as exc:  # every request gets exactly one final response, errors included
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"Error generating request: {exc}")),
                        flags=FINAL)
        finally:
            if watcher is not None:
                watcher.cancel()
            others = [g for g in self.running.pop(request_id, []) if g is not generation]
            if others:
                self.running[request_id] = others

    def finalize(self) -> None:
        if self.llm is None:
            return
        self.llm.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
