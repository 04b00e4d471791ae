"""An HF safetensors checkpoint of any architecture into another dtype, near disk speed.

Names, shapes and order stay, so every output file's layout is known before any weight is read: its safetensors
header is written first, then each tensor at its final offset. A tensor that keeps its dtype is copied by the
kernel (``os.copy_file_range`` of its byte range; runs of such tensors in one call) without passing through Python
or torch. A tensor that is cast flows in chunks of ``CHUNK`` bytes through three threads, reader -> cast -> writer,
in ``POOL`` reused buffers: memory is a few chunks, whatever the largest tensor.
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
    reading,
)
from launcher.checkpoints.hf import read_json
from launcher.convert.progress import Progress

if TYPE_CHECKING:
    import torch

CHUNK = 16 * 1024**2  # bytes of source read per cast step; divisible by every item size
PAGE = 4096
POOL = 3  # buffers of each kind: one being read or cast or written, one waiting
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
    """The output header and where each tensor goes. The header is padded with spaces (as the format allows) so
    the data starts at the source's offset within a page: kernel copies then move whole pages, several times
    faster than copies that straddle them."""
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
    first = entries[0].start if entries else 8
    aligned = first % 8 == 0  # the format wants the data 8-byte aligned; then match the source within its page
    text += b" " * ((first - 8 - len(text)) % PAGE if aligned else -len(text) % 8)
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
    """reader -> cast -> writer threads over the output files' pieces; the first error stops them all.

    Chunks travel in buffers from two fixed pools (source bytes, cast bytes) that go back once used: memory is
    ``POOL`` chunks of each, and no page is allocated (and faulted in) twice.
    """

    def __init__(self, progress: Progress, growth: int) -> None:
        import torch

        self.progress = progress
        self.casts: queue.Queue = queue.Queue()
        self.writes: queue.Queue = queue.Queue()
        self.sources: queue.Queue = queue.Queue()
        self.targets: queue.Queue = queue.Queue()
        for _ in range(POOL):
            self.sources.put(bytearray(CHUNK))
            self.targets.put(torch.empty(CHUNK * growth, dtype=torch.uint8))
        self.error: BaseException | None = None
        self.failed = threading.Event()

    def _get(self, channel: queue.Queue) -> Any:
        """The next item, or None once a stage has failed (so no thread waits for one that stopped)."""
        while not self.failed.is_set():
            try:
                return channel.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _guard(self, work: Any) -> None:
        try:
            work()
        except BaseException as exc:
            self.error = self.error or exc
            self.failed.set()

    def run(self, jobs: list[tuple[int, int, list[_Piece]]]) -> None:
        """``jobs``: (source fd, output fd, pieces) per output file. torch casts on one thread meanwhile: its
        other OpenMP threads would spin between chunks on the cores the reader and the writer need."""
        import torch

        threads = [threading.Thread(target=self._guard, args=(work,), daemon=True)
                   for work in (lambda: self._read(jobs), self._cast, self._write)]
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C: the stages stop at their next chunk before the files are closed
            self.failed.set()
            for thread in threads:
                thread.join()
            raise
        finally:
            torch.set_num_threads(torch_threads)
        if self.error is not None:
            raise self.error

    def _read(self, jobs: list[tuple[int, int, list[_Piece]]]) -> None:
        for src, dst, pieces in jobs:
            run: list[_Piece] = []  # same-dtype pieces contiguous in source and output: one kernel copy
            for piece in [*pieces, None]:
                if self.failed.is_set():
                    return
                if run and (piece is None or piece.cast or piece.entry.start != run[-1].entry.end):
                    first, last = run[0], run[-1]
                    self.casts.put(("copy", first.source, src, first.entry.start, dst, first.out_start,
                                    last.entry.end - first.entry.start, len(run)))
                    run = []
                if piece is None:
                    continue
                if not piece.cast:
                    run.append(piece)
                    continue
                for start in range(piece.entry.start, piece.entry.end, CHUNK):
                    count = min(CHUNK, piece.entry.end - start)
                    if (buffer := self._get(self.sources)) is None:
                        return
                    if os.preadv(src, [memoryview(buffer)[:count]], start) != count:
                        raise damaged(piece.source, f"the file ends inside tensor '{piece.entry.name}'")
                    last = start + count == piece.entry.end
                    self.casts.put(("cast", buffer, count, piece, start - piece.entry.start, dst, last))
        self.casts.put(None)

    def _cast(self) -> None:
        import torch

        while (job := self._get(self.casts)) is not None:
            if job[0] == "cast":
                _, buffer, count, piece, done, dst, last = job
                source = getattr(torch, SAFETENSORS_NAMES[piece.entry.dtype])
                target = getattr(torch, piece.out_dtype)
                values = count // source.itemsize
                if (out := self._get(self.targets)) is None:
                    return
                out[:values * target.itemsize].view(target).copy_(
                    torch.frombuffer(buffer, dtype=source, count=values))
                self.sources.put(buffer)
                offset = piece.out_start + done // source.itemsize * target.itemsize
                job = ("write", out, values * target.itemsize, dst, offset, count, int(last))
            self.writes.put(job)
        self.writes.put(None)

    def _write(self) -> None:
        while (job := self._get(self.writes)) is not None:
            if job[0] == "copy":
                _, source, src, src_offset, dst, dst_offset, count, tensors = job
                with reading(source, "safetensors weights"):  # a file cut short since its header was read
                    copy_range(src, src_offset, dst, dst_offset, count)
                self.progress.advance(count, tensors)
                continue
            _, out, nbytes, dst, offset, source_bytes, tensors = job
            view = memoryview(out.numpy())[:nbytes]
            written = 0
            while written < nbytes:
                written += os.pwrite(dst, view[written:], offset + written)
            self.targets.put(out)
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
            os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # read whole: a larger readahead window
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            opened.append(dst)
            os.pwrite(dst, header, 0)
            jobs.append((src, dst, pieces))
        growth = max([DTYPE_BYTES[p.out_dtype] // DTYPE_BYTES[SAFETENSORS_NAMES[p.entry.dtype]]
                      for *_, pieces in files for p in pieces if p.cast] or [1]) or 1
        with Progress(f"export {checkpoint.path.name} -> {name}", source_bytes,
                      sum(len(p) for *_, p in files)) as progress:
            _Stages(progress, max(growth, 1)).run(jobs)
    finally:
        for fd in opened:
            os.close(fd)
    if len(files) > 1 or (checkpoint.path / INDEX).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return out_dir
