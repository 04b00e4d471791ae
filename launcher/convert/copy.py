"""An HF safetensors checkpoint of any architecture into another dtype, near disk speed.

Names, shapes and order stay, so every output file's layout is known before any weight is read: its safetensors
header is written first, then each tensor at its final offset. A tensor that keeps its dtype is copied by the
kernel (``os.copy_file_range`` of its byte range; runs of such tensors in one call) without passing through Python
or torch. A tensor that is cast flows in chunks of ``CHUNK`` bytes through three threads, reader -> cast -> writer,
with at most ``DEPTH`` chunks between two of them: memory is a few chunks, whatever the largest tensor.
"""

from __future__ import annotations

import errno
import json
import math
import os
import queue
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.checkpoints.base import (
    DTYPE_BYTES,
    FLOAT_DTYPES,
    SAFETENSORS_DTYPES,
    SAFETENSORS_NAMES,
    Checkpoint,
    SafetensorsEntry,
    damaged,
)
from launcher.checkpoints.hf import read_json
from launcher.convert.progress import Progress

if TYPE_CHECKING:
    import torch

CHUNK = 32 * 1024**2  # bytes of source read per cast step; divisible by every item size
DEPTH = 2  # chunks waiting between two stages
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")
INDEX = "model.safetensors.index.json"
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


@dataclass(frozen=True)
class _Piece:
    """One tensor of an output file: where its bytes come from and go, and the dtype it is cast to (or None)."""

    entry: SafetensorsEntry
    source: Path
    out_start: int  # absolute offset in the output file
    out_dtype: str  # torch dtype name

    @property
    def cast(self) -> bool:
        return self.out_dtype != SAFETENSORS_NAMES[self.entry.dtype]

    @property
    def out_bytes(self) -> int:
        return math.prod(self.entry.shape) * DTYPE_BYTES[self.out_dtype]


def _layout(entries: list[SafetensorsEntry], source: Path, dtype: str) -> tuple[bytes, list[_Piece]]:
    """The output header (padded to 8 bytes, as safetensors writes it) and where each tensor goes."""
    pieces, offset, header = [], 0, {"__metadata__": {"format": "pt"}}
    for entry in entries:
        name = SAFETENSORS_NAMES[entry.dtype]
        out_dtype = dtype if name in FLOAT_DTYPES else name  # integers, bools and fp8 stay as they are
        nbytes = math.prod(entry.shape) * DTYPE_BYTES[out_dtype]
        header[entry.name] = {"dtype": SAFETENSORS_DTYPES[out_dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + nbytes]}
        pieces.append(_Piece(entry, source, offset, out_dtype))
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    return struct.pack("<Q", len(text)) + text, [_Piece(p.entry, p.source, start + p.out_start, p.out_dtype)
                                                  for p in pieces]


def copy_range(src: int, src_offset: int, dst: int, dst_offset: int, count: int) -> None:
    """``count`` bytes from ``src`` at ``src_offset`` to ``dst`` at ``dst_offset``, in the kernel where it can
    (``copy_file_range``), else with positioned reads and writes."""
    while count:
        try:
            done = os.copy_file_range(src, dst, count, src_offset, dst_offset)
        except OSError as err:
            if err.errno not in _NO_COPY_RANGE:
                raise
            done = 0
        if done == 0:  # not supported here (or end of file): plain positioned I/O for the rest
            _copy_by_reads(src, src_offset, dst, dst_offset, count)
            return
        src_offset, dst_offset, count = src_offset + done, dst_offset + done, count - done


def _copy_by_reads(src: int, src_offset: int, dst: int, dst_offset: int, count: int) -> None:
    while count:
        data = os.pread(src, min(count, CHUNK), src_offset)
        if not data:
            raise EOFError(f"the source file ends {count} bytes early")
        os.pwrite(dst, data, dst_offset)
        src_offset, dst_offset, count = src_offset + len(data), dst_offset + len(data), count - len(data)


class _Stages:
    """reader -> cast -> writer threads over the output files' pieces; the first error stops them all."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.casts: queue.Queue = queue.Queue(DEPTH)
        self.writes: queue.Queue = queue.Queue(DEPTH)
        self.error: BaseException | None = None
        self.failed = threading.Event()

    def _put(self, channel: queue.Queue, job: Any) -> None:
        while not self.failed.is_set():
            try:
                channel.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def _guard(self, work: Any) -> None:
        try:
            work()
        except BaseException as exc:
            self.error = self.error or exc
            self.failed.set()

    def run(self, jobs: list[tuple[int, int, list[_Piece]]]) -> None:
        """``jobs``: (source fd, output fd, pieces) per output file."""
        threads = [threading.Thread(target=self._guard, args=(work,), daemon=True)
                   for work in (lambda: self._read(jobs), self._cast, self._write)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.error is not None:
            raise self.error

    def _read(self, jobs: list[tuple[int, int, list[_Piece]]]) -> None:
        for src, dst, pieces in jobs:
            run: list[_Piece] = []  # same-dtype pieces contiguous in source and output: one kernel copy
            for piece in [*pieces, None]:
                if run and (piece is None or piece.cast or piece.entry.start != run[-1].entry.end):
                    first, last = run[0], run[-1]
                    self._put(self.casts, ("copy", src, first.entry.start, dst, first.out_start,
                                           last.entry.end - first.entry.start, len(run)))
                    run = []
                if piece is None or self.failed.is_set():
                    continue
                if not piece.cast:
                    run.append(piece)
                    continue
                for start in range(piece.entry.start, piece.entry.end, CHUNK):
                    count = min(CHUNK, piece.entry.end - start)
                    data = bytearray(count)
                    if os.preadv(src, [data], start) != count:
                        raise damaged(piece.source, f"the file ends inside tensor '{piece.entry.name}'")
                    last = start + count == piece.entry.end
                    self._put(self.casts, ("cast", data, piece, start - piece.entry.start, dst, last))
        self._put(self.casts, None)

    def _cast(self) -> None:
        import torch

        while (job := self.casts.get()) is not None and not self.failed.is_set():
            if job[0] == "cast":
                _, data, piece, done, dst, last = job
                source = getattr(torch, SAFETENSORS_NAMES[piece.entry.dtype])
                target = getattr(torch, piece.out_dtype)
                cast = torch.frombuffer(data, dtype=source).to(target)
                offset = piece.out_start + done // source.itemsize * target.itemsize
                job = ("write", cast, dst, offset, len(data), int(last))
            self._put(self.writes, job)
        self._put(self.writes, None)

    def _write(self) -> None:
        import torch

        while (job := self.writes.get()) is not None and not self.failed.is_set():
            if job[0] == "copy":
                _, src, src_offset, dst, dst_offset, count, tensors = job
                copy_range(src, src_offset, dst, dst_offset, count)
                self.progress.advance(count, tensors)
            else:
                _, cast, dst, offset, source_bytes, tensors = job
                view = memoryview(cast.view(torch.uint8).numpy())
                written = 0
                while written < len(view):
                    written += os.pwrite(dst, view[written:], offset + written)
                self.progress.advance(source_bytes, tensors)


def copy_files(source: Path, out_dir: Path, dtype: str) -> None:
    """Every non-weight file beside the weights (config, tokenizer, generation config ...), ``config.json`` with
    its dtype changed to ``dtype``."""
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".index.json"):
            continue
        if path.name == "config.json":
            config = read_json(path)
            for key in ("torch_dtype", "dtype"):
                if key in config or key == "torch_dtype":
                    config[key] = dtype
            (out_dir / path.name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copyfile(path, out_dir / path.name)


def copy_hf(checkpoint: Checkpoint, out_dir: Path, dtype: torch.dtype) -> Path:
    """``checkpoint`` (HF safetensors, any architecture) as an HF directory whose floating weights are ``dtype``."""
    assert checkpoint.safetensors, "an HF safetensors checkpoint"
    name = str(dtype).removeprefix("torch.")
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_files(checkpoint.path, out_dir, name)
    files, weight_map, total = [], {}, 0
    for source, entries in checkpoint.safetensors.items():
        header, pieces = _layout(entries, source, name)
        files.append((source, out_dir / source.name, header, pieces))
        weight_map.update({p.entry.name: source.name for p in pieces})
        total += sum(p.out_bytes for p in pieces)
    source_bytes = sum(e.end - e.start for entries in checkpoint.safetensors.values() for e in entries)
    opened: list[int] = []
    try:
        jobs = []
        for source, target, header, pieces in files:
            src = os.open(source, os.O_RDONLY)
            opened.append(src)
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            opened.append(dst)
            os.pwrite(dst, header, 0)
            os.ftruncate(dst, pieces[-1].out_start + pieces[-1].out_bytes if pieces else len(header))
            jobs.append((src, dst, pieces))
        with Progress(f"export {checkpoint.path.name} -> {name}", source_bytes,
                      sum(len(p) for *_, p in files)) as progress:
            _Stages(progress).run(jobs)
    finally:
        for fd in opened:
            os.close(fd)
    if len(files) > 1 or (checkpoint.path / INDEX).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
