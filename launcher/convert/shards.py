"""Write safetensors files tensor by tensor, so memory stays bounded by the largest tensor.

A safetensors file is ``u64 header length | JSON header | data``, and the header (names, shapes,
offsets) comes first. Instead of collecting a shard in memory, each file starts with a fixed
space reserved for the header; tensors are written after it as they arrive, and the header is
written into the reserved space (padded with spaces, which the format allows) when the file closes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.checkpoints.base import SAFETENSORS_DTYPES

if TYPE_CHECKING:
    import torch

HEADER_RESERVE = 256 * 1024  # bytes; about 2,000 tensor entries per file
DEFAULT_SHARD_BYTES = 2 * 1024**3



class _File:
    """One safetensors file being written: tensors go out immediately, the header at close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        self.header_bytes = len(b'{"__metadata__":{"format":"pt"}}')
        self.data_bytes = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._f.seek(8 + HEADER_RESERVE)

    def fits(self, name: str, shape: tuple[int, ...], nbytes: int, limit: int) -> bool:
        entry_bytes = len(json.dumps({name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}}))
        entry_bytes += 2 * len(str(self.data_bytes + nbytes))  # the real offsets' digits
        too_big = self.entries and self.data_bytes + nbytes > limit
        return not too_big and self.header_bytes + entry_bytes <= HEADER_RESERVE

    def add(self, name: str, tensor: torch.Tensor) -> None:
        import torch

        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        start = self.data_bytes
        self._f.write(memoryview(data))
        self.data_bytes += data.nbytes
        entry = {"dtype": SAFETENSORS_DTYPES[str(tensor.dtype).removeprefix("torch.")],
                 "shape": list(tensor.shape), "data_offsets": [start, self.data_bytes]}
        self.entries[name] = entry
        self.header_bytes += len(json.dumps({name: entry}))

    def close(self) -> None:
        header = json.dumps({"__metadata__": {"format": "pt"}, **self.entries}, separators=(",", ":")).encode()
        assert len(header) <= HEADER_RESERVE, "fits() keeps the header inside the reserved space"
        self._f.seek(0)
        self._f.write(struct.pack("<Q", HEADER_RESERVE) + header.ljust(HEADER_RESERVE, b" "))
        self._f.close()


class ShardWriter:
    """Write ``model-0000k-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.

    >>> with ShardWriter(out_dir) as w:
    ...     for name, tensor in stream:
    ...         w.add(name, tensor)
    """

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, prefix: str = "model") -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self.prefix = prefix
        self.files: list[_File] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        current = self.files[-1] if self.files else None
        if current is None or not current.fits(name, tuple(tensor.shape), nbytes, self.max_shard_bytes):
            if current is not None:
                current.close()
            current = _File(self.out_dir / f"{self.prefix}-{len(self.files) + 1:05d}.safetensors.partial")
            self.files.append(current)
        current.add(name, tensor)
        self.total_bytes += nbytes

    def finish(self) -> dict[str, str]:
        """Close the last shard, give every shard its final name, write the index; returns the weight map."""
        if self.files:
            self.files[-1].close()
        weight_map = {}
        for k, f in enumerate(self.files, start=1):
            final = f"{self.prefix}-{k:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(f.path, self.out_dir / final)
            weight_map.update(dict.fromkeys(f.entries, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return weight_map

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.finish()
        elif self.files:
            self.files[-1]._f.close()
