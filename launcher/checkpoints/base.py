"""What every checkpoint reader returns."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

TensorStream = Iterator[tuple[str, "torch.Tensor"]]


@dataclass
class Checkpoint:
    """A checkpoint on this machine: its format, architecture and a lazy stream of HF-named tensors."""

    path: Path
    format: str  # hf | gguf | nemo | nemo2 | qnemo
    arch: ModelArch
    tokenizer: Path | None  # directory (or file) holding the tokenizer
    quantization: dict[str, Any] | None = None  # e.g. {"quant_algo": "FP8", "kv_cache_quant_algo": None}
    stream: Callable[[], TensorStream] | None = field(default=None, repr=False)

    def tensors(self) -> TensorStream:
        """Yield ``(hf_name, tensor)`` one at a time; memory stays bounded by the largest tensor."""
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
