"""What every checkpoint reader returns, and the error handling readers share."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
HF_QUANT_METHODS = {"fp8": "FP8", "awq": "W4A16_AWQ"}  # HF quantization_config.quant_method -> quant_algo


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
    # e.g. {"quant_algo": "FP8", "kv_cache_quant_algo": None}: a TensorRT-LLM ``quantization`` block, a
    # ModelOpt ``hf_quant_config.json`` or an HF ``quantization_config`` (``quant_method``)
    quantization: dict[str, Any] | None = None
    mapping: dict[str, int] | None = None  # qnemo: the TensorRT-LLM split it was saved with (tp/pp/world size)
    stream: Callable[[], TensorStream] | None = field(default=None, repr=False)

    @property
    def quant_algo(self) -> str | None:
        """TensorRT-LLM's name of the quantization the weights carry (``FP8``, ``W4A16_AWQ``, ...), or None."""
        found = self.quantization or {}
        algo = found.get("quant_algo") or HF_QUANT_METHODS.get(str(found.get("quant_method")))
        return str(algo) if algo and algo != "NO_QUANT" else None

    @property
    def kv_cache_quant_algo(self) -> str | None:
        return (self.quantization or {}).get("kv_cache_quant_algo")

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
            name = f.relative_to(self.path) if f != self.path else f.name
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
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


def read_safetensors(f: IO[bytes], where: str) -> TensorStream:
    """Tensors of a safetensors file object, one at a time, each read into its own buffer.

    Plain reads rather than ``safe_open``'s memory map: a map keeps every page it touched resident
    until the file is closed, so peak RSS would grow to the file's size. This works on tar members too.
    """
    import torch

    with reading(where, "safetensors weights"):
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        needed = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"), default=0)
        f.seek(0, 2)
        if f.tell() < 8 + size + needed:
            raise EOFError(f"the file is cut short: {f.tell()} bytes, its header needs {8 + size + needed}")
    dtypes = {code: getattr(torch, name) for name, code in SAFETENSORS_DTYPES.items()}
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda e: e[1]["data_offsets"])
    for name, entry in entries:
        start, end = entry["data_offsets"]
        with reading(where, f"tensor {name}"):
            f.seek(8 + size + start)
            data = torch.empty(end - start, dtype=torch.uint8)
            if f.readinto(memoryview(data.numpy())) != end - start:
                raise EOFError(f"tensor {name} is cut short")
        yield name, data.view(dtypes[entry["dtype"]]).reshape(entry["shape"])
