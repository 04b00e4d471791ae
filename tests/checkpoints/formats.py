"""Each input format's tiny fixture, by id, for the parametrized checkpoint tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.fixtures.tiny_models import write_gguf, write_hf, write_nemo, write_nemo2, write_qnemo

# id -> (expected format, writer(tmp_dir) -> checkpoint path)
FORMATS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "hf": ("hf", lambda d: write_hf(d / "hf")),
    "hf-bin": ("hf", lambda d: write_hf(d / "hf-bin", weights="bin")),
    "hf-tied": ("hf", lambda d: write_hf(d / "hf-tied", tie=True)),
    "hf-mistral": ("hf", lambda d: write_hf(d / "hf-mistral", arch="MistralForCausalLM")),
    "gguf": ("gguf", lambda d: write_gguf(d / "tiny.gguf")),
    "gguf-tied": ("gguf", lambda d: write_gguf(d / "tied.gguf", tie=True)),
    "gguf-mistral": ("gguf", lambda d: write_gguf(d / "mistral.gguf", arch="MistralForCausalLM")),
    "gguf-q8_0": ("gguf", lambda d: write_gguf(d / "q8.gguf", tensor_type="Q8_0")),
    "nemo-legacy": ("nemo", lambda d: write_nemo(d / "legacy.nemo")),
    "nemo-legacy-tied": ("nemo", lambda d: write_nemo(d / "tied.nemo", tie=True)),
    "nemo-dist": ("nemo", lambda d: write_nemo(d / "dist.nemo", dist=True)),
    "nemo-gzip": ("nemo", lambda d: write_nemo(d / "gz.nemo", dist=True, gzip=True)),
    "nemo2": ("nemo2", lambda d: write_nemo2(d / "nemo2")),
    "nemo2-tied": ("nemo2", lambda d: write_nemo2(d / "nemo2-tied", tie=True)),
    "nemo2-mistral": ("nemo2", lambda d: write_nemo2(d / "nemo2-mistral", arch="MistralForCausalLM")),
    "qnemo": ("qnemo", lambda d: write_qnemo(d / "tiny.qnemo")),
    "qnemo-dir": ("qnemo", lambda d: write_qnemo(d / "qnemo-dir", tar=False)),
}


def source_kwargs(case: str) -> dict:
    """The ``write_hf`` arguments of the model a fixture was written from."""
    return {"tie": "tied" in case, "arch": "MistralForCausalLM" if "mistral" in case else "LlamaForCausalLM"}
