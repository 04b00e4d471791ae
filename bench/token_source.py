"""A Triton Python model on the vLLM-backend contract that computes nothing: it answers every prompt with
``max_tokens`` words, one response per word, ``token_interval_s`` apart (a parameter of its config).

Written by us, for ``openai_bench.py --backend source``: with no model competing for the CPU, what a client
sees through the OpenAI front end minus what it sees straight over gRPC is the front end's own cost. It
reads the inputs the front end sends (``sampling_parameters``' ``max_tokens``, ``stream``, the ``return_*``
flags) and nothing else; the prompt's length in words stands in for its token count.
"""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WORD = b" word"


def scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value.item()


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.interval = float(parameters.get("token_interval_s", {}).get("string_value", "0.005"))

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.answer, args=(request,), daemon=True).start()
        return None

    def answer(self, request):
        sender = request.get_response_sender()
        max_tokens = int(json.loads(scalar(request, "sampling_parameters", "{}")).get("max_tokens", 16))
        stream = bool(scalar(request, "stream", False))
        returns = {name for name in ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
                   if scalar(request, name, False)}
        prompt_words = len(scalar(request, "text_input", "").split())
        start = time.perf_counter()
        for index in range(1, max_tokens + 1):
            time.sleep(max(start + index * self.interval - time.perf_counter(), 0))
            if sender.is_cancelled():
                sender.send(flags=FINAL)
                return
            last = index == max_tokens
            if stream or last:
                count = 1 if stream else max_tokens
                sender.send(self.response(WORD * count, count, prompt_words, "length" if last else "None", returns),
                            flags=FINAL if last else 0)

    @staticmethod
    def response(text, count, prompt_words, reason, returns):
        outputs = [pb_utils.Tensor("text_output", np.array([text], dtype=np.object_))]
        if "return_finish_reason" in returns:
            outputs.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
        if "return_num_input_tokens" in returns:
            outputs.append(pb_utils.Tensor("num_input_tokens", np.asarray(prompt_words, dtype=np.uint32)))
        if "return_num_output_tokens" in returns:
            outputs.append(pb_utils.Tensor("num_output_tokens", np.asarray([count], dtype=np.uint32)))
        return pb_utils.InferenceResponse(outputs)
