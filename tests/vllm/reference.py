"""Greedy text from ``vllm.LLM`` on a rendered ``model.json``: ``python reference.py MODEL_JSON N PROMPT...``.

Prints ``REFERENCE <JSON list of completions>`` (``N`` new tokens each; vLLM logs to stdout too).
A script, because vLLM spawns its engine core and so needs a ``__main__`` guard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from vllm import LLM, SamplingParams

    engine_args = json.loads(Path(sys.argv[1]).read_text())
    max_tokens, prompts = int(sys.argv[2]), sys.argv[3:]
    llm = LLM(**engine_args)
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    print("REFERENCE", json.dumps([o.outputs[0].text for o in outputs]), flush=True)


if __name__ == "__main__":
    main()
