"""Read files out of a checkpoint directory or tar by relative name, safely.

An uncompressed tar is read in place (``tarfile`` knows each member's offset, so a member is a
seekable file object); a gzip tar has no random access and is extracted once into a temporary
directory. Every tar is checked first: absolute names, ``..`` components, links pointing outside
it and device files are refused, so nothing can be read or written outside the archive.
"""

from __future__ import annotations

import fnmatch
import shutil
import tarfile
import tempfile
import weakref
from pathlib import Path, PurePosixPath
from typing import IO

from launcher.checkpoints.base import reading
from launcher.errors import user_error

GZIP_MAGIC = b"\x1f\x8b"


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
            return f"link to '{member.linkname}' outside the archive"
    if member.isdev() or member.isfifo():
        return "device or fifo"
    return None


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    """The members of the tar at ``path``, after refusing any unsafe one (one error naming it)."""
    with reading(path, "tar archive"), tarfile.open(path, "r:*") as tar:
        members = tar.getmembers()
    for member in members:
        if why := _unsafe(member):
            raise user_error(str(path), f"unsafe member '{member.name}' ({why})",
                             "refusing to read this archive; re-create it from a trusted source")
    return members


def member_names(path: Path) -> set[str]:
    """Relative names of a tar's regular files (``./`` prefix removed), checked for safety."""
    return {_normalize(m.name) for m in tar_members(path) if m.isfile()}


class Archive:
    """Read-only view of a checkpoint's files, by relative name, whether a directory or a tar."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._scratch: Path | None = None
        self.root: Path | None = path if path.is_dir() else None  # where the files are on disk, if they are
        if self.root is not None:
            return
        members = tar_members(path)
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        if compressed:
            self.root = self.scratch() / "extracted"
            with reading(path, "tar archive"), tarfile.open(path, "r:*") as tar:
                tar.extractall(self.root, filter="data")
        else:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 (kept open for the archive's lifetime)
            weakref.finalize(self, self._tar.close)
            self._members = {_normalize(m.name): m for m in members if m.isfile()}

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

    def glob(self, pattern: str) -> list[str]:
        return [n for n in self.names() if fnmatch.fnmatch(n, pattern)]

    def open(self, name: str) -> IO[bytes]:
        """A seekable binary file object for member ``name``."""
        if self.root is not None:
            return open(self.root / name, "rb")
        assert self._tar is not None
        f = self._tar.extractfile(self._members[name])
        assert f is not None, "regular files always extract"
        return f

    def local(self, *names: str) -> Path:
        """A directory on disk holding ``names`` (extracted into scratch space if this is a tar)."""
        if self.root is not None:
            return self.root
        target = self.scratch() / "members"
        for name in names:
            if (target / name).is_file():
                continue
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            with self.open(name) as src, open(target / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
        return target
