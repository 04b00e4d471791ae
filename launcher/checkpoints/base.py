"""What every checkpoint reader returns, and the error handling readers share."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

TensorStream = Iterator[tuple[str, "torch.Tensor"]]

SAFETENSORS_DTYPES = {  # torch dtype name -> safetensors header code
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int8": "I8", "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


@dataclass
class Checkpoint:
    """A checkpoint on this machine: its format, architecture and a lazy stream of HF-named tensors.

    ``tensors()`` yields Hugging Face Llama names (``model.layers.0.self_attn.q_proj.weight``), except
    for ``qnemo``, whose tensors are already TensorRT-LLM names (``transformer.layers.0.attention.qkv.weight``).
    """

    path: Path
    format: str  # hf | gguf | nemo | nemo2 | qnemo
    arch: ModelArch
    tokenizer: Path | None  # HF tokenizer directory, a .gguf file, or a sentencepiece .model file
    quantization: dict[str, Any] | None = None  # e.g. {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    mapping: dict[str, int] | None = None  # qnemo: the TensorRT-LLM split it was saved with (tp/pp/world size)
    stream: Callable[[], TensorStream] | None = field(default=None, repr=False)

    def tensors(self) -> TensorStream:
        """Yield ``(name, tensor)`` one at a time; memory stays bounded by the largest tensor."""
        if self.stream is None:
            raise NotImplementedError(f"reading {self.format} weights is not available")
        return self.stream()

    def fingerprint(self) -> str:
        """Cheap identity of the files (relative path, size, mtime); never hashes the weights."""
        files = [self.path] if self.path.is_file() else sorted(p for p in self.path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(self.path) if f != self.path else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


@contextmanager
def reading(path: Path | str, what: str) -> Iterator[None]:
    """Turn a corrupt or unsafe file's low-level error into one ``LauncherError`` line naming the file."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, pickle.UnpicklingError,
            SafetensorError) as exc:
        raise user_error(str(path), f"cannot read {what}: {_first_line(exc)}",
                         "the file is damaged or not what it claims to be; re-download or re-export it") from exc


def load_torch_file(path: Path) -> dict[str, Any]:
    """``torch.load`` a pickle checkpoint safely: only tensors and plain containers, memory-mapped
    (so tensors stay on disk until used) unless it is the pre-zip legacy format, which cannot be."""
    import torch

    with reading(path, "the torch checkpoint"):
        return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)
