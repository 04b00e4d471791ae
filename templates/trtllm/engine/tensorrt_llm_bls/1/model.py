"""llm-launch's tensorrt_llm_bls: the ensemble's three steps (preprocessing, the TensorRT-LLM model,
postprocessing) called from Python with Triton's BLS API, written from the inflight_batcher_llm contract.

Takes the ensemble's text inputs and returns ``text_output`` (plus the log-prob and logits outputs the
model sends). With ``stream`` true (decoupled only) it sends one response per chunk the model streams;
``accumulate_tokens`` decodes all tokens so far each time (whole words across chunks) instead of the chunk.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
PREPROCESSING = {"text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
                 "stop_words": "STOP_WORDS_DICT", "embedding_bias_words": "EMBEDDING_BIAS_WORDS",
                 "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS", "end_id": "END_ID", "pad_id": "PAD_ID"}
PREPROCESSED = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
                "REQUEST_OUTPUT_LEN": "request_output_len", "STOP_WORDS_IDS": "stop_words_list",
                "BAD_WORDS_IDS": "bad_words_list", "EMBEDDING_BIAS": "embedding_bias",
                "OUT_END_ID": "end_id", "OUT_PAD_ID": "pad_id"}
SAMPLING = {"top_k": "runtime_top_k", "top_p": "runtime_top_p", "temperature": "temperature",
            "length_penalty": "len_penalty", "repetition_penalty": "repetition_penalty",
            "min_tokens": "min_tokens", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "seed": "seed", "beam_width": "beam_width",
            "exclude_input_in_output": "exclude_input_in_output", "stream": "streaming",
            "prompt_embedding_table": "prompt_embedding_table"}
PASSED_ON = ("cum_log_probs", "output_log_probs", "context_logits", "generation_logits")


def _inputs(request, names: dict[str, str]) -> list:
    tensors = []
    for source, target in names.items():
        tensor = pb_utils.get_input_tensor_by_name(request, source)
        if tensor is not None:
            tensors.append(pb_utils.Tensor(target, tensor.as_numpy()))
    return tensors


def _outputs(response, names) -> dict[str, np.ndarray]:
    if response.has_error():
        raise pb_utils.TritonModelException(response.error().message())
    found = {}
    for name in names:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.model_name = parameters["tensorrt_llm_model_name"]
        self.accumulate = parameters.get("accumulate_tokens", "false").lower() in ("true", "1")
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))

    def _text(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name="postprocessing", requested_output_names=["OUTPUT"],
            inputs=[pb_utils.Tensor("TOKENS_BATCH", tokens.astype(np.int32)),
                    pb_utils.Tensor("SEQUENCE_LENGTH", lengths.astype(np.int32))])
        return _outputs(request.exec(), ["OUTPUT"])["OUTPUT"]

    def _generate(self, request):
        """Yield ``(outputs, final)`` per response of the TensorRT-LLM model."""
        pre = pb_utils.InferenceRequest(model_name="preprocessing", requested_output_names=list(PREPROCESSED),
                                        inputs=_inputs(request, PREPROCESSING)).exec()
        ids = _outputs(pre, PREPROCESSED)
        inputs = [pb_utils.Tensor(PREPROCESSED[k], v) for k, v in ids.items()] + _inputs(request, SAMPLING)
        stream = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = stream is not None and bool(stream.as_numpy().reshape(-1)[0])
        if streaming and not self.decoupled:
            raise pb_utils.TritonModelException("stream=true needs a decoupled model (backend.streaming=true)")
        llm = pb_utils.InferenceRequest(model_name=self.model_name, inputs=inputs,
                                        requested_output_names=["output_ids", "sequence_length", *PASSED_ON])
        responses = llm.exec(decoupled=True) if streaming else [llm.exec()]
        seen: list[np.ndarray] | None = None  # tokens so far, per beam (accumulate_tokens)
        for response in responses:
            if not response.has_error() and pb_utils.get_output_tensor_by_name(response, "output_ids") is None:
                continue  # the empty final response of a stream
            found = _outputs(response, ["output_ids", "sequence_length", *PASSED_ON])
            tokens, lengths = found.pop("output_ids"), found.pop("sequence_length")
            if self.accumulate:
                beams = [t[: int(n)] for t, n in zip(tokens.reshape(-1, tokens.shape[-1]), lengths.reshape(-1),
                                                     strict=True)]
                seen = beams if seen is None else [np.concatenate([a, b]) for a, b in zip(seen, beams, strict=True)]
                width = max(len(t) for t in seen)
                tokens = np.stack([np.pad(t, (0, width - len(t))) for t in seen]).reshape(*lengths.shape, width)
                lengths = np.array([len(t) for t in seen]).reshape(lengths.shape)
            yield {"text_output": self._text(tokens, lengths), **found}

    def _response(self, outputs: dict[str, np.ndarray]) -> object:
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])

    def execute(self, requests: list) -> list | None:
        responses = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                for outputs in self._generate(request):
                    if sender is not None:
                        sender.send(self._response(outputs))
                    else:
                        responses.append(self._response(outputs))
                if sender is not None:
                    sender.send(flags=FINAL)
            except Exception as exc:  # one bad request must not fail the others
                error = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                sender.send(error, flags=FINAL) if sender is not None else responses.append(error)
        return None if self.decoupled else responses
