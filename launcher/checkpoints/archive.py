"""Read files out of a checkpoint directory or tar by relative name, safely and within bounds.

Every tar is checked member by member before anything is used: absolute names, ``..`` components, links
pointing outside it, device files and sparse members are refused, as are more than ``MAX_MEMBERS`` members
and members whose data would lie past the end of the file (a truncated tar). Nothing is extracted whole:

- an uncompressed tar is read in place (``tarfile`` knows each member's offset, so a member is a seekable
  file object); only small files a reader needs on disk (a tokenizer) are copied out, each at most
  ``SMALL_FILE_LIMIT`` bytes;
- a gzip tar has no random access. One streaming pass reads its headers and keeps the small members in
  memory; the sizes it declares may total at most ``GZIP_EXPANSION`` times the compressed size (or
  ``GZIP_FLOOR``), and decompression stops at that budget whatever the headers say. Only when a large member
  (weights) is opened, at export, is the stream decompressed once, within the same budget, into a private
  temporary tar.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from launcher.checkpoints.base import SMALL_FILE_LIMIT, reading, shown
from launcher.errors import LauncherError, user_error

GZIP_MAGIC = b"\x1f\x8b"
MEMORY_LIMIT = 128 * 2**20  # small gzip members kept in memory, in all
MAX_MEMBERS = 10_000  # a TP8 x PP8 dist checkpoint has about 150
GZIP_EXPANSION = 20  # weights barely compress; a checkpoint expanding more than this is a bomb
GZIP_FLOOR = 64 * 2**20  # allowed expansion of a small gzip archive, whatever its ratio
_COPY_CHUNK = 16 * 2**20
_FIX = "refusing to read this archive; re-create it from a trusted source"


def _normalize(name: str) -> str:
    return str(PurePosixPath(name)).removeprefix("./").lstrip("/") if name not in (".", "./") else ""


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be trusted, or None."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in name.parts:
        return "'..' in its path"
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = name.parent if member.issym() else PurePosixPath()
        if target.is_absolute() or ".." in (base / target).parts:
            return f"link to '{shown(member.linkname)}' outside the archive"
    if member.isdev() or member.isfifo():
        return "device or fifo"
    if member.issparse():
        return "sparse member: it expands to more than the archive holds, and no checkpoint writer makes one"
    return None


def _refused(path: Path, message: str) -> LauncherError:
    return user_error(str(path), message, _FIX)


class _Budget(io.RawIOBase):
    """A read-only stream that refuses to yield more than ``limit`` bytes of ``raw`` (a decompressor)."""

    def __init__(self, raw: IO[bytes], limit: int, path: Path) -> None:
        self.raw, self.limit, self.path, self.count = raw, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise _refused(self.path, f"expands past {self.limit} bytes ({GZIP_EXPANSION}x its size): a "
                                      "decompression bomb")
        buffer[: len(data)] = data
        return len(data)


def _gzip_budget(path: Path) -> int:
    return max(GZIP_FLOOR, GZIP_EXPANSION * path.stat().st_size)


class Archive:
    """Read-only view of a checkpoint's files, by relative name, whether a directory or a tar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._in_memory: dict[str, bytes] = {}  # gzip: small members read during the scan
        self._gzip_end = 0  # gzip: decompressed bytes up to the end of the last member
        self._scratch: Path | None = None
        self.root: Path | None = path if path.is_dir() else None  # where the files are on disk, if they are
        self.compressed = False  # a gzip tar
        if self.root is not None:
            return
        with open(path, "rb") as f:
            self.compressed = f.read(2) == GZIP_MAGIC
        if self.compressed:
            self._scan_gzip()
        else:
            size = path.stat().st_size
            with reading(path, "tar archive"):
                self._tar = tarfile.open(path, "r:")  # noqa: SIM115 (kept open for the archive's lifetime)
                weakref.finalize(self, self._tar.close)
                for member in self._checked(self._tar):
                    if member.offset_data + member.size > size:
                        raise _refused(path, f"member '{shown(member.name)}' needs bytes up to "
                                             f"{member.offset_data + member.size}, the file has {size}: truncated")

    def _checked(self, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        """Iterate ``tar``'s members, refusing unsafe ones and too many; regular files are indexed by name."""
        for count, member in enumerate(tar, 1):
            if count > MAX_MEMBERS:
                raise _refused(self.path, f"more than {MAX_MEMBERS} members")
            if why := _unsafe(member):
                raise _refused(self.path, f"unsafe member '{shown(member.name)}' ({why})")
            if member.isfile():
                self._members[_normalize(member.name)] = member
            yield member

    def _scan_gzip(self) -> None:
        budget, declared, in_memory = _gzip_budget(self.path), 0, 0
        with (reading(self.path, "gzip tar archive"), gzip.open(self.path, "rb") as raw,
              io.BufferedReader(_Budget(raw, budget, self.path)) as stream,
              tarfile.open(fileobj=stream, mode="r|") as tar):
            for member in self._checked(tar):
                declared += member.size
                if declared > budget:
                    raise _refused(self.path, f"its members declare more than {budget} bytes ({GZIP_EXPANSION}x "
                                              f"the archive's size): a decompression bomb")
                if member.isfile() and member.size <= SMALL_FILE_LIMIT and in_memory + member.size <= MEMORY_LIMIT:
                    self._in_memory[_normalize(member.name)] = tar.extractfile(member).read()
                    in_memory += member.size
            self._gzip_end = tar.offset
            while stream.read(_COPY_CHUNK):  # to the end, so that gzip checks its CRC (within the budget)
                pass

    def _decompressed(self) -> tarfile.TarFile:
        """The gzip stream as a plain tar in scratch space, written once, within the scan's budget."""
        if self._tar is None:
            target = self.scratch() / "decompressed.tar"
            with reading(self.path, "gzip tar archive"), gzip.open(self.path, "rb") as src, open(target, "wb") as dst:
                remaining = self._gzip_end
                while remaining > 0 and (data := src.read(min(_COPY_CHUNK, remaining))):
                    dst.write(data)
                    remaining -= len(data)
                dst.write(bytes(2 * tarfile.BLOCKSIZE))  # end-of-archive marker
            self._tar = tarfile.open(target, "r:")  # noqa: SIM115 (kept open for the archive's lifetime)
            weakref.finalize(self, self._tar.close)
        return self._tar

    def scratch(self) -> Path:
        """A private temporary directory, removed when the archive is garbage collected (or at exit)."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="llm-launch-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        return self._scratch

    def names(self) -> list[str]:
        if self.root is not None:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        return sorted(self._members)

    def has(self, name: str) -> bool:
        return (self.root / name).is_file() if self.root is not None else name in self._members

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size if self.root is not None else self._members[name].size

    def open(self, name: str) -> IO[bytes]:
        """A seekable binary file object for member ``name``."""
        if self.root is not None:
            return open(self.root / name, "rb")
        if name in self._in_memory:
            return io.BytesIO(self._in_memory[name])
        tar = self._tar or self._decompressed()
        f = tar.extractfile(self._members[name])
        assert f is not None, "regular files always extract"
        return f

    def read_small(self, name: str, what: str) -> bytes:
        """The whole of a config or tokenizer file, refused beyond ``SMALL_FILE_LIMIT`` bytes."""
        size = self.size(name)
        if size > SMALL_FILE_LIMIT:
            raise _refused(self.path, f"{what} '{shown(name)}' is {size} bytes, more than the "
                                      f"{SMALL_FILE_LIMIT} any real one has")
        with reading(f"{self.path}:{name}", what), self.open(name) as f:
            return f.read(size)

    def local(self, *names: str) -> Path:
        """A directory on disk holding the small files ``names`` (copied into scratch space if this is a tar)."""
        if self.root is not None:
            return self.root
        target = self.scratch() / "members"
        for name in names:
            if not (target / name).is_file():
                data = self.read_small(name, "tokenizer file")
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                (target / name).write_bytes(data)
        return target
