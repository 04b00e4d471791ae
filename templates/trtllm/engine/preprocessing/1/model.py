"""llm-launch's preprocessing model for the TensorRT-LLM ensemble: text in, token ids out.

Written from the inflight_batcher_llm tensor contract (it needs only a tokenizer). Per batch row:
``QUERY`` -> ``INPUT_ID`` (padded with the pad id to the longest row) and ``REQUEST_INPUT_LEN``;
``STOP_WORDS_DICT``/``BAD_WORDS_DICT`` -> ``[2, n]`` word lists (row 0: the words' token ids one after
another, row 1: where each word ends, padded with -1); ``EMBEDDING_BIAS_WORDS`` + ``_WEIGHTS`` -> a
vocabulary-sized bias; ``END_ID``/``PAD_ID`` default to the tokenizer's; ``REQUEST_OUTPUT_LEN`` as given.
Also the outputs the v0.19.0 ensemble maps for encoder-decoder and prompt-table models: ``DECODER_QUERY``
-> ``DECODER_INPUT_ID`` + ``REQUEST_DECODER_INPUT_LEN`` (without it one pad token, length 1, which a
decoder-only engine ignores) and ``PROMPT_TABLE_EXTRA_ID`` -> ``OUT_PROMPT_TABLE_EXTRA_IDS`` (the id for
every input token; 0 without it).
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config: dict, key: str, default: str = "") -> str:
    return config["parameters"].get(key, {}).get("string_value", default)


def _rows(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _texts(row: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in row.reshape(-1) if v]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(_parameter(config, "tokenizer_dir"))
        self.add_special_tokens = _parameter(config, "add_special_tokens", "true").lower() in ("true", "1")
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        self.vocab_size = len(self.tokenizer)

    def _word_lists(self, words: np.ndarray | None, batch: int) -> np.ndarray:
        """``[batch, 2, n]``: per row, the words' token ids one after another (padded with 0) and the
        end offset of each word (padded with -1); a row without words is ``[[0], [-1]]``."""
        rows = []
        for i in range(batch):
            ids, offsets = [], []
            for word in _texts(words[i]) if words is not None else []:
                ids += self.tokenizer.encode(word, add_special_tokens=False)
                offsets.append(len(ids))
            rows.append((ids, offsets))
        size = max(1, *(max(len(ids), len(offsets)) for ids, offsets in rows))
        lists = np.zeros((batch, 2, size), dtype=np.int32)
        lists[:, 1, :] = -1
        for i, (ids, offsets) in enumerate(rows):
            lists[i, 0, : len(ids)] = ids
            lists[i, 1, : len(offsets)] = offsets
        return lists

    def _bias(self, words: list[str], weights: np.ndarray | None) -> np.ndarray:
        bias = np.zeros(self.vocab_size if words else 0, dtype=np.float32)
        for word, weight in zip(words, [] if weights is None else weights.reshape(-1), strict=False):
            for token in self.tokenizer.encode(word, add_special_tokens=False):
                bias[token] += weight
        return bias

    def _respond(self, request) -> object:
        queries = _rows(request, "QUERY")
        batch = queries.shape[0]
        ids = [self.tokenizer.encode("".join(_texts(queries[i])), add_special_tokens=self.add_special_tokens)
               for i in range(batch)]
        end = _rows(request, "END_ID")
        pad = _rows(request, "PAD_ID")
        end_ids = end.reshape(batch, 1).astype(np.int32) if end is not None else np.full((batch, 1), self.end_id)
        pad_ids = pad.reshape(batch, 1).astype(np.int32) if pad is not None else np.full((batch, 1), self.pad_id)
        width = max(len(row) for row in ids)
        input_ids = np.array([row + [int(pad_ids[i, 0])] * (width - len(row)) for i, row in enumerate(ids)],
                             dtype=np.int32)
        lists = {target: self._word_lists(_rows(request, source), batch)
                 for source, target in (("STOP_WORDS_DICT", "STOP_WORDS_IDS"), ("BAD_WORDS_DICT", "BAD_WORDS_IDS"))}
        bias_words, bias_weights = _rows(request, "EMBEDDING_BIAS_WORDS"), _rows(request, "EMBEDDING_BIAS_WEIGHTS")
        biases = [self._bias(_texts(bias_words[i]) if bias_words is not None else [],
                             bias_weights[i] if bias_weights is not None else None) for i in range(batch)]
        size = max(len(b) for b in biases)
        bias = np.stack([np.pad(b, (0, size - len(b))) for b in biases]).astype(np.float32)
        decoder = _rows(request, "DECODER_QUERY")
        if decoder is not None:
            decoder_ids = [self.tokenizer.encode("".join(_texts(decoder[i])), add_special_tokens=False)
                           for i in range(batch)]
        else:
            decoder_ids = [[int(pad_ids[i, 0])] for i in range(batch)]
        decoder_width = max(len(row) for row in decoder_ids)
        extra = _rows(request, "PROMPT_TABLE_EXTRA_ID")
        extra_ids = np.zeros(input_ids.shape, dtype=np.uint64)
        if extra is not None:
            extra_ids[:] = extra.reshape(batch, 1).astype(np.uint64)
        outputs = {
            "INPUT_ID": input_ids,
            "DECODER_INPUT_ID": np.array([row + [int(pad_ids[i, 0])] * (decoder_width - len(row))
                                          for i, row in enumerate(decoder_ids)], dtype=np.int32),
            "REQUEST_DECODER_INPUT_LEN": np.array([[len(row)] for row in decoder_ids], dtype=np.int32),
            "OUT_PROMPT_TABLE_EXTRA_IDS": extra_ids,
            "REQUEST_INPUT_LEN": np.array([[len(row)] for row in ids], dtype=np.int32),
            **lists,
            "EMBEDDING_BIAS": bias,
            "REQUEST_OUTPUT_LEN": _rows(request, "REQUEST_OUTPUT_LEN").reshape(batch, -1).astype(np.int32),
            "OUT_END_ID": end_ids.astype(np.int32),
            "OUT_PAD_ID": pad_ids.astype(np.int32),
        }
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except Exception as exc:  # one bad request must not fail the whole batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
