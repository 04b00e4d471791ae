"""Hostile tars (``.nemo``, ``.qnemo``): bombs, sparse members, truncation, unsafe members, oversized small files.

CLI cases are held as tests/hostile/cli.py says (exit 2, one line naming the file, nothing written, no
marker); the in-process tests check that inspection extracts nothing but small tokenizer files.
"""

from __future__ import annotations

import gc
import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from launcher.checkpoints import inspect
from launcher.checkpoints.archive import MAX_MEMBERS, SMALL_FILE_LIMIT
from tests.fixtures import tiny_models as tiny
from tests.hostile import files
from tests.hostile.cli import Case, assert_refused

CONFIG = b"hidden_size: 128\n"
MiB = 2**20


def _member(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = size, kind, linkname
    return info


def _zeros_tgz(path: Path, members: list[tuple[tarfile.TarInfo, int]]) -> Path:
    """A gzip tar of ``model_config.yaml`` then members whose data (``int`` bytes, which may be fewer than their
    headers declare) are zeros streamed through zlib level 1, never held in memory."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        config = _member("./model_config.yaml", len(CONFIG))
        out.write(config.tobuf(tarfile.GNU_FORMAT) + CONFIG.ljust(tarfile.BLOCKSIZE, b"\0"))
        for info, data_bytes in members:
            out.write(info.tobuf(tarfile.PAX_FORMAT if info.pax_headers else tarfile.GNU_FORMAT))
            padded = -(-data_bytes // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            for start in range(0, padded, 16 * MiB):
                out.write(bytes(min(16 * MiB, padded - start)))
        out.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


def _declared_bomb(case_dir: Path) -> Path:
    """gzip .nemo whose second header declares 2 GiB; only a few bytes of data follow."""
    return _zeros_tgz(case_dir / "m.nemo", [(_member("./model_weights.ckpt", 2**31), 0)])


def _real_bomb(case_dir: Path) -> Path:
    """A complete, valid gzip .nemo holding a 200 MiB member of zeros (about 200 KiB compressed)."""
    return _zeros_tgz(case_dir / "m.nemo", [(_member("./model_weights.ckpt", 200 * MiB), 200 * MiB)])


def _pax_bomb(case_dir: Path) -> Path:
    """gzip .nemo whose pax extended header claims 100 MiB (tarfile reads such a header into memory)."""
    info = _member("./model_weights.ckpt")
    path = case_dir / "m.nemo"
    with gzip.open(path, "wb", compresslevel=1) as out:
        config = _member("./model_config.yaml", len(CONFIG))
        out.write(config.tobuf(tarfile.GNU_FORMAT) + CONFIG.ljust(tarfile.BLOCKSIZE, b"\0"))
        pax = _member("././@PaxHeader", 100 * MiB, tarfile.XHDTYPE)
        out.write(pax.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(100 // 16 + 1):
            out.write(bytes(16 * MiB))
        out.write(info.tobuf(tarfile.GNU_FORMAT) + bytes(2 * tarfile.BLOCKSIZE))
    return path


def _gnu_sparse(compress: bool):
    """A .nemo made by GNU tar ``--sparse`` with a 2 GiB sparse member (a real tool's sparse format)."""
    def build(case_dir: Path) -> Path:
        work = case_dir / "work"
        work.mkdir()
        (work / "model_config.yaml").write_bytes(CONFIG)
        with open(work / "model_weights.ckpt", "wb") as f:
            f.truncate(2 * 2**30)
        path = case_dir / "m.nemo"
        subprocess.run(["tar", "--sparse", "-czf" if compress else "-cf", str(path), "-C", str(work),
                        "model_config.yaml", "model_weights.ckpt"], check=True)
        shutil.rmtree(work)
        return path
    return build


def _cut(compress: bool):
    def build(case_dir: Path) -> Path:
        path = files.fixture("nemo", case_dir / "m.nemo", gzip=compress)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return build


def _gzip_corrupt(case_dir: Path) -> Path:
    path = files.fixture("nemo", case_dir / "m.nemo", gzip=True)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _member_past_eof(case_dir: Path) -> Path:
    path = case_dir / "m.nemo"
    config = _member("./model_config.yaml", len(CONFIG))
    path.write_bytes(config.tobuf(tarfile.GNU_FORMAT) + CONFIG.ljust(tarfile.BLOCKSIZE, b"\0")
                     + _member("./model_weights.ckpt", 2**30).tobuf(tarfile.GNU_FORMAT))
    return path


def _many_members(case_dir: Path) -> Path:
    return _zeros_tgz(case_dir / "m.nemo", [(_member(f"./f{i}"), 0) for i in range(MAX_MEMBERS + 1)])


def _oversized(kind: str):
    """An uncompressed checkpoint whose small file (tokenizer, config) is 1 MiB over the limit (a hole on disk)."""
    def build(case_dir: Path) -> Path:
        if kind == "qnemo-tokenizer":
            source = files.fixture("qnemo", case_dir / "source.qnemo")
            small = "tokenizer.json"
        else:
            source = files.fixture("nemo", case_dir / "source.nemo")
            small = files.NEMO1_TOKENIZER if kind == "nemo-tokenizer" else "model_config.yaml"
        path = case_dir / f"m{source.suffix}"
        files.retar(source, path, drop=(small,))
        source.unlink()
        size = SMALL_FILE_LIMIT + MiB
        with open(path, "r+b") as f:  # overwrite the end-of-archive blocks with the oversized member
            end = f.seek(0, io.SEEK_END)
            while end > 0:
                f.seek(end - tarfile.BLOCKSIZE)
                if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
                    break
                end -= tarfile.BLOCKSIZE
            f.seek(end)
            f.write(_member(f"./{small}", size).tobuf(tarfile.GNU_FORMAT))
            f.seek(-(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, io.SEEK_CUR)
            f.write(bytes(2 * tarfile.BLOCKSIZE))
        return path
    return build


def _with_member(info: tarfile.TarInfo, data: bytes | None = None, *, compress: bool = False):
    def build(case_dir: Path) -> Path:
        source = files.fixture("nemo", case_dir / "source.nemo")
        info.size = len(data) if data is not None else 0
        path = files.retar(source, case_dir / "m.nemo", add=[(info, data)], mode="w:gz" if compress else "w")
        source.unlink()
        return path
    return build


def _bytes(name: str, data: bytes):
    def build(case_dir: Path) -> Path:
        (case_dir / name).write_bytes(data)
        return case_dir / name
    return build


BOMB = "decompression bomb"
UNSAFE = "unsafe member"
CASES = [
    Case("gz-declared-2GiB", _declared_bomb, ("m.nemo", BOMB)),
    Case("gz-zeros-200MiB", _real_bomb, ("m.nemo", BOMB)),
    Case("gz-zeros-200MiB-export", _real_bomb, ("m.nemo", BOMB), action="export"),
    Case("gz-pax-header-100MiB", _pax_bomb, ("m.nemo", BOMB)),
    Case("gz-gnu-sparse-2GiB", _gnu_sparse(compress=True), ("m.nemo", "sparse member")),
    Case("tar-gnu-sparse-2GiB", _gnu_sparse(compress=False), ("m.nemo", "sparse member")),
    Case("tar-truncated", _cut(compress=False), ("m.nemo",)),
    Case("gz-truncated", _cut(compress=True), ("m.nemo", "cannot read gzip tar archive")),
    Case("gz-corrupt-stream", _gzip_corrupt, ("m.nemo", "cannot read gzip tar archive")),
    Case("tar-member-past-eof", _member_past_eof, ("m.nemo", "truncated")),
    Case("gz-too-many-members", _many_members, ("m.nemo", f"more than {MAX_MEMBERS} members")),
    Case("nemo-tokenizer-oversized", _oversized("nemo-tokenizer"), ("m.nemo", "tokenizer file")),
    Case("nemo-config-oversized", _oversized("nemo-config"), ("m.nemo", "model config")),
    Case("qnemo-tokenizer-oversized", _oversized("qnemo-tokenizer"), ("m.qnemo", "tokenizer file")),
    Case("member-dotdot", _with_member(tarfile.TarInfo("../escaped.txt"), b"x"), ("m.nemo", "'..' in its path")),
    Case("member-dotdot-gz", _with_member(tarfile.TarInfo("./a/../../escaped.txt"), b"x", compress=True),
         ("m.nemo", "'..' in its path")),
    Case("member-absolute", _with_member(tarfile.TarInfo("/tmp/escaped-absolute.txt"), b"x"),
         ("m.nemo", "absolute path")),
    Case("member-symlink-out", _with_member(_member("./link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd")),
         ("m.nemo", "outside the archive")),
    Case("member-hardlink-out", _with_member(_member("./hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")),
         ("m.nemo", "outside the archive")),
    Case("member-char-device", _with_member(_member("./dev", kind=tarfile.CHRTYPE)), ("m.nemo", "device or fifo")),
    Case("member-fifo", _with_member(_member("./fifo", kind=tarfile.FIFOTYPE)), ("m.nemo", "device or fifo")),
    Case("member-name-newline", _with_member(tarfile.TarInfo("./x\nerror injected/../../y"), b"x"),
         ("m.nemo", UNSAFE)),
    Case("not-a-tar", _bytes("m.nemo", b"\x00" * 300 + b"garbage"), ("model.checkpoint", "cannot tell")),
    Case("empty-gz", _bytes("m.nemo", gzip.compress(b"")), ("m.nemo",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_archive_is_refused_and_nothing_expands(case: Case, cli_outcomes) -> None:
    assert_refused(cli_outcomes[case.id].result())


def _scratch_files(checkpoint) -> list[str]:
    scratch = checkpoint.tokenizer.parents[1] if checkpoint.tokenizer else None
    return sorted(p.name for p in scratch.rglob("*") if p.is_file()) if scratch else []


@pytest.mark.parametrize("kind", ["tar", "gz", "gz-no-memory"])
@pytest.mark.parametrize("dist", [False, True], ids=["legacy", "dist"])
def test_inspection_extracts_only_the_tokenizer_and_export_cleans_up(tmp_path: Path, kind: str, dist: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """At plan only the sentencepiece model reaches the disk; weights are streamed from the tar. A gzip tar's
    small members are kept in memory; when they do not fit ("gz-no-memory"), the stream is decompressed once
    into scratch space, within the bomb budget. The scratch goes with the archive."""
    from launcher.checkpoints import archive

    if kind == "gz-no-memory":
        monkeypatch.setattr(archive, "MEMORY_LIMIT", 0)
    checkpoint = inspect(files.fixture("nemo", tmp_path / "m.nemo", gzip=kind != "tar", dist=dist))
    scratch = checkpoint.tokenizer.parents[1]
    on_disk = sorted([files.NEMO1_TOKENIZER, *(["decompressed.tar"] if kind == "gz-no-memory" else [])])
    assert _scratch_files(checkpoint) == on_disk
    assert sum(1 for _ in checkpoint.tensors()) == len(tiny.tiny_state_dict())
    assert _scratch_files(checkpoint) == on_disk
    del checkpoint
    gc.collect()
    assert not scratch.exists()
