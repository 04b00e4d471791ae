"""llm-launch's postprocessing model for the TensorRT-LLM ensemble: token ids in, text out.

Written from the inflight_batcher_llm tensor contract (it needs only a tokenizer):
``TOKENS_BATCH`` ``[batch, beams, tokens]`` and ``SEQUENCE_LENGTH`` ``[batch, beams]`` -> ``OUTPUT``
``[batch, beams]``, each beam's first ``SEQUENCE_LENGTH`` tokens decoded.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from transformers import AutoTokenizer

        parameters = json.loads(args["model_config"])["parameters"]
        self.tokenizer = AutoTokenizer.from_pretrained(parameters["tokenizer_dir"]["string_value"])
        skip = parameters.get("skip_special_tokens", {}).get("string_value", "true")
        self.skip_special_tokens = skip.lower() in ("true", "1")

    def _respond(self, request) -> object:
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        if tokens.ndim == 2:  # one beam without its axis
            tokens, lengths = tokens[:, None, :], lengths.reshape(-1, 1)
        texts = [[self.tokenizer.decode(tokens[b, beam, : int(lengths[b, beam])].tolist(),
                                        skip_special_tokens=self.skip_special_tokens).encode("utf-8")
                  for beam in range(tokens.shape[1])] for b in range(tokens.shape[0])]
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as exc:  # one bad request must not fail the whole batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
