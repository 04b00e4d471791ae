"""What every checkpoint reader returns, and what readers share: one-line errors for damaged files, typed
config reads (``Fields``), checked safetensors headers and torch files read one storage at a time."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from launcher.errors import LauncherError, user_error
from launcher.spec import ModelArch

if TYPE_CHECKING:
    import torch

TensorStream = Iterator[tuple[str, "torch.Tensor"]]

DTYPE_BYTES = {  # bytes per element of each torch dtype a checkpoint's weights may have
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2, "int32": 4,
    "int64": 8, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}
SAFETENSORS_DTYPES = {  # torch dtype name -> safetensors header code
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int8": "I8", "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
SAFETENSORS_NAMES = {code: name for name, code in SAFETENSORS_DTYPES.items()}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
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
    # HF safetensors: each file's checked header, so a converter can copy a tensor's bytes without reading it
    safetensors: dict[Path, list[SafetensorsEntry]] | None = field(default=None, repr=False)

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


def shown(value: object, limit: int = 60) -> str:
    """``value`` as one short, printable line for an error message (file contents may hold newlines)."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(value: object) -> str:
    return f"{shown(repr(value))} ({_kind(value)})"


def _kind(value: object) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


DAMAGED = "the file is damaged or not what it claims to be; re-download or re-export it"
_MALFORMED = (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, OverflowError, struct.error,
              pickle.UnpicklingError, tarfile.TarError, zlib.error)


@contextmanager
def reading(path: Path | str, what: str) -> Iterator[None]:
    """Turn a corrupt or unsafe file's low-level error into one ``LauncherError`` line naming the file."""
    from safetensors import SafetensorError

    try:
        yield
    except (*_MALFORMED, SafetensorError) as exc:
        raise user_error(str(path), f"cannot read {what}: {shown(_first_line(exc), 200)}", DAMAGED) from exc


def damaged(where: Path | str, message: str) -> LauncherError:
    """A one-line error for a file whose contents contradict its own format."""
    return user_error(str(where), message, DAMAGED)


SMALL_FILE_LIMIT = 64 * 2**20  # a config or tokenizer file; real ones are under 40 MiB
_REQUIRED: Any = object()
MAX_SIZE = 2**31 - 1  # bound for any size or count in a model config (vocabulary, layers, positions ...)


class Fields:
    """Typed reads of one mapping from a checkpoint's config file.

    A missing or wrongly typed value (``num_attention_heads: "four"``, a list where an int goes, a negative
    size) is one ``LauncherError`` naming ``where: key``, instead of a ``TypeError`` somewhere later.
    ``None`` counts as missing, so ``default`` applies to it as JSON ``null`` and YAML ``~`` mean.
    """

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, dict):
            raise damaged(where, f"expected a mapping, found {_kind(data)}")
        self.data, self.where = data, where

    def error(self, key: str, message: str) -> LauncherError:
        return user_error(f"{self.where}: {key}", message, "fix the value in the file or re-export the checkpoint")

    def key(self, *names: str) -> str:
        """The first of ``names`` that has a value (else the last): for keys with older spellings."""
        return next((name for name in names if self.data.get(name) is not None), names[-1])

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "is missing")
            return default
        return value

    def int(self, key: str, default: Any = _REQUIRED, *, minimum: int = 1) -> Any:
        """An integer from ``minimum`` to MAX_SIZE (``default`` None: None when absent)."""
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_SIZE:
            raise self.error(key, f"is {_value(value)}; expected an integer from {minimum} "
                                  f"to {MAX_SIZE}")
        return value

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        """A positive, finite number."""
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise self.error(key, f"is {_value(value)}; expected a positive number")
        return float(value)

    def str(self, key: str, default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"is {_value(value)}; expected a string")
        return value

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"is {_value(value)}; expected true or false")
        return value

    def strings(self, key: str) -> list[str] | None:
        """A list of strings (at most MAX_SIZE of them), or None when absent."""
        value = self._get(key, None)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise self.error(key, f"is {_value(value)}; expected a list of strings")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        """A nested mapping, or None when absent."""
        value = self._get(key, None)
        if value is not None and not isinstance(value, dict):
            raise self.error(key, f"is {_value(value)}; expected a mapping")
        return value

    def child(self, key: str) -> Fields:
        """Typed reads of the nested mapping ``key`` (an empty one when absent)."""
        return Fields(self.mapping(key) or {}, f"{self.where}: {key}")


def check_arch(arch: ModelArch, where: str) -> ModelArch:
    """Refuse sizes no decoder can have: query heads that do not group over the KV heads, layer kinds for a
    different number of layers (one line naming the file)."""
    if arch.num_attention_heads % arch.num_kv_heads:
        raise damaged(where, f"{arch.num_attention_heads} attention heads are not a multiple of "
                             f"{arch.num_kv_heads} key/value heads")
    if arch.layer_types is not None and len(arch.layer_types) != arch.num_layers:
        raise damaged(where, f"layer_types names {len(arch.layer_types)} layers; the model has {arch.num_layers}")
    return arch


PACKED_VALUES = {"qweight": 8}  # GPTQ/AWQ pack eight 4-bit weights into each int32


def count_parameters(tensors: Iterable[tuple[str, tuple[int, ...], str]]) -> int:
    """Weights in ``(name, shape, safetensors dtype)`` entries, packed 4-bit ones unpacked."""
    total = 0
    for name, shape, dtype in tensors:
        packed = PACKED_VALUES.get(name.rsplit(".", 1)[-1], 1) if dtype == "I32" else 1
        total += math.prod(shape) * packed
    return total


def load_torch_file(path: Path) -> dict[str, Any]:
    """``torch.load`` a pickle checkpoint safely: only tensors and plain containers, memory-mapped
    (so tensors stay on disk until used) unless it is the pre-zip legacy format, which cannot be."""
    import torch

    with reading(path, "the torch checkpoint"):
        return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)


def torch_file_index(f: IO[bytes], where: str) -> dict[str, Any]:
    """A zip-format ``torch.save`` file loaded with every tensor on the meta device: only its pickle is read
    (``weights_only``), so shapes and storage offsets are known before any weight is."""
    import torch

    with reading(where, "the torch checkpoint"):
        if not zipfile.is_zipfile(f):
            raise ValueError("not a zip-format torch.save file")
        f.seek(0)
        state = torch.load(f, map_location="meta", weights_only=True)
    if not isinstance(state, dict):
        raise damaged(where, f"holds {_kind(state)}, not a state dict")
    return state


def torch_file_tensors(f: IO[bytes], where: str, index: dict[str, Any]) -> TensorStream:
    """The tensors of ``index`` (from ``torch_file_index``), each storage read from ``f`` when it is needed.

    Works on any seekable file object (a tar member too), so a weights file is never extracted.
    """
    import torch

    @functools.lru_cache(maxsize=1)  # views of one storage follow each other
    def storage(offset: int, nbytes: int) -> torch.Tensor:
        f.seek(offset)
        data = bytearray(f.read(nbytes))
        if len(data) != nbytes:
            raise EOFError(f"a tensor at byte {offset} is cut short")
        return torch.frombuffer(data, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)

    for name, meta in index.items():
        if not isinstance(meta, torch.Tensor):
            if "_extra_state" in str(name):
                continue
            raise damaged(where, f"entry '{shown(name)}' is {_kind(meta)}, not a tensor")
        with reading(where, f"tensor {shown(name)}"):
            untyped = meta.untyped_storage()
            raw = storage(untyped._checkpoint_offset, untyped.nbytes())
            tensor = raw.view(meta.dtype).as_strided(meta.shape, meta.stride(), meta.storage_offset())
        yield name, tensor


MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit (safetensors rejects larger headers)
SAFETENSORS_ITEMSIZE = {code: DTYPE_BYTES[name] for name, code in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class SafetensorsEntry:
    name: str
    dtype: str  # safetensors code, e.g. BF16
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def safetensors_index(f: IO[bytes], where: str) -> list[SafetensorsEntry]:
    """The checked header of a safetensors file object, by offset: every entry's dtype is known, its shape
    matches its byte range, ranges lie inside the file and do not overlap. Reads only the header."""
    with reading(where, "safetensors weights"):
        f.seek(0, 2)
        file_size = f.tell()
        f.seek(0)
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(MAX_SAFETENSORS_HEADER, file_size - 8):
            raise damaged(where, f"safetensors header length {size} does not fit the file's {file_size} bytes")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise damaged(where, f"safetensors header is {_kind(header)}, not a JSON object")
    entries = [_safetensors_entry(name, entry, 8 + size, where) for name, entry in header.items()
               if name != "__metadata__"]
    entries.sort(key=lambda e: (e.start, e.end))
    previous_end = 8 + size
    for entry in entries:
        if entry.start < previous_end:
            raise damaged(where, f"tensor '{shown(entry.name)}' overlaps the previous one in the safetensors data")
        previous_end = entry.end
    if previous_end > file_size:
        raise damaged(where, f"the file is cut short: {file_size} bytes, its header needs {previous_end}")
    return entries


def _safetensors_entry(name: str, entry: object, data_start: int, where: str) -> SafetensorsEntry:
    def bad(message: str) -> LauncherError:
        return damaged(where, f"safetensors tensor '{shown(name)}': {message}")

    if not isinstance(entry, dict):
        raise bad(f"is {_kind(entry)}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise bad(f"unknown dtype {shown(dtype)} (known: {', '.join(SAFETENSORS_ITEMSIZE)})")

    def counts(value: object, length: int | None) -> bool:
        return (isinstance(value, list) and (length is None or len(value) == length)
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in value))

    if not counts(shape, None):
        raise bad(f"shape {shown(shape)} is not a list of non-negative integers")
    if not counts(offsets, 2) or offsets[0] > offsets[1]:
        raise bad(f"data_offsets {shown(offsets)} are not two offsets with 0 <= start <= end")
    nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"shape {shape} ({dtype}) needs {nbytes} bytes, its data_offsets span {offsets[1] - offsets[0]}")
    return SafetensorsEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_safetensors(f: IO[bytes], where: str, entries: list[SafetensorsEntry] | None = None) -> TensorStream:
    """Tensors of a safetensors file object, one at a time, each read into its own buffer.

    Plain reads rather than ``safe_open``'s memory map: a map keeps every page it touched resident
    until the file is closed, so peak RSS would grow to the file's size. This works on tar members too.
    """
    import torch

    entries = safetensors_index(f, where) if entries is None else entries
    dtypes = {code: getattr(torch, name) for name, code in SAFETENSORS_DTYPES.items()}
    for entry in entries:
        with reading(where, f"tensor {shown(entry.name)}"):
            f.seek(entry.start)
            data = torch.empty(entry.end - entry.start, dtype=torch.uint8)
            if f.readinto(memoryview(data.numpy())) != entry.end - entry.start:
                raise EOFError(f"tensor {shown(entry.name)} is cut short")
        yield entry.name, data.view(dtypes[entry.dtype]).reshape(entry.shape)
