"""Hostile pickles: torch-DCP ``.metadata`` (NeMo 1.0 dist-ckpt and 2.0) and ``torch.load`` files.

Each payload tries to create a ``pwned*`` marker in its case directory; every case must be refused with
one line naming the file, and the marker must never appear (tests/hostile/cli.py says what else is held).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tests.fixtures import tiny_models as tiny
from tests.hostile import files
from tests.hostile.cli import Case, assert_refused

SYSTEM = ("posix", "system")  # what os.system pickles as
OPEN = ("builtins", "open")


def _call_args(kind: tuple[str, str], marker: Path) -> tuple[str, ...]:
    return (f"touch {marker}",) if kind == SYSTEM else (str(marker), "w")


def _ours() -> bytes:
    """Our fixture's NeMo-style ``.metadata`` (tests/fixtures/tiny_models.py)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return (files.fixture("nemo2", Path(tmp) / "n") / "weights" / ".metadata").read_bytes()


def _trojaned_nemo2(kind: tuple[str, str], *, real: bool):
    """A NeMo 2.0 dir whose ``.metadata`` (NeMo-written, or ours) still loads but first calls ``kind``."""
    def build(case_dir: Path) -> Path:
        source = files.real_metadata() if real else _ours()
        data = files.trojan(source, *kind, *_call_args(kind, files.marker(case_dir)))
        return files.nemo2_with_metadata(case_dir, data, real=real)
    return build


def _nemo2_raw(make: object):
    def build(case_dir: Path) -> Path:
        return files.nemo2_with_metadata(case_dir, make(files.marker(case_dir)))
    return build


def _trojaned_nemo(kind: tuple[str, str]):
    """A dist-ckpt ``.nemo`` read at plan (no sentencepiece tokenizer) with a trojaned ``.metadata``."""
    def build(case_dir: Path) -> Path:
        data = files.trojan(_ours(), *kind, *_call_args(kind, files.marker(case_dir)))
        return files.nemo_dist_without_tokenizer(case_dir, data)
    return build


def _legacy_nemo(case_dir: Path) -> Path:
    return files.legacy_nemo_with_state(case_dir, {"state_dict": files.OpenPayload(files.marker(case_dir))})


def _hf_bin(legacy: bool):
    def build(case_dir: Path) -> Path:
        path = files.fixture("hf", case_dir / "hf", weights="bin")
        torch.save({"model.embed_tokens.weight": files.SystemPayload(files.marker(case_dir))},
                   path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        return path
    return build


def _distcp_chunk(case_dir: Path) -> Path:
    """A NeMo 2.0 dir (ours) whose first chunk is re-pointed at a ``torch.save``d payload appended to its file."""
    import io

    path = files.fixture("nemo2", case_dir / "nemo2")
    weights = path / "weights"
    metadata = files.our_metadata(weights)
    index, info = next(iter(metadata.storage_data.items()))
    blob = io.BytesIO()
    torch.save([files.OpenPayload(files.marker(case_dir)), torch.zeros(info.length)], blob)  # as long as before
    chunk_file = weights / info.relative_path
    offset = chunk_file.stat().st_size
    chunk_file.write_bytes(chunk_file.read_bytes() + blob.getvalue())
    metadata.storage_data[index] = type(info)(info.relative_path, offset, len(blob.getvalue()))
    (weights / ".metadata").write_bytes(tiny._pickle_as_megatron(metadata))
    return path


def _dotted_gadget(marker: Path) -> bytes:
    """``Metadata.__init__.__globals__``-style traversal through an allowed module (protocol 4 resolves dots)."""
    return files.global_call("torch.distributed.checkpoint.metadata", "Metadata.__init__.__globals__", protocol=4)


def _persistent_id(marker: Path) -> bytes:
    return b"\x80\x02P" + b"x\n" + b"."


def _wrong_type(marker: Path) -> bytes:
    return pickle.dumps({"state_dict_metadata": {}, "storage_data": {}})


def _escaping_chunk(marker: Path) -> bytes:
    """A valid ``Metadata`` whose storage points at ``../../outside.distcp``."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    fqn = "module.embedding.word_embeddings.weight"
    meta = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([4]),
                                 [ChunkStorageMetadata(torch.Size([0]), torch.Size([4]))])
    info = _StorageInfo("../../outside.distcp", 0, 16)
    return pickle.dumps(Metadata({fqn: meta}, storage_data={MetadataIndex(fqn, (0,)): info}))


META = ".metadata"
CASES = [
    Case("nemo2-ours-open", _trojaned_nemo2(OPEN, real=False), (META,), action="export"),
    Case("nemo2-ours-system", _trojaned_nemo2(SYSTEM, real=False), (META,), action="export"),
    Case("nemo2-real-system", _trojaned_nemo2(SYSTEM, real=True), (META,), action="export"),
    Case("nemo2-real-open", _trojaned_nemo2(OPEN, real=True), (META,), action="export"),
    Case("nemo-plan-system", _trojaned_nemo(SYSTEM), (META,)),
    Case("nemo-plan-open", _trojaned_nemo(OPEN), (META,)),
    Case("nemo-export-system", _trojaned_nemo(SYSTEM), (META,), action="export"),
    Case("global-protocol0-os-system", _nemo2_raw(lambda m: files.global_call("os", "system", f"touch {m}",
                                                                                protocol=0)), (META,),
         action="export"),
    Case("global-posix-system", _nemo2_raw(lambda m: files.global_call("posix", "system", f"touch {m}")), (META,),
         action="export"),
    Case("global-builtins-exec", _nemo2_raw(lambda m: files.global_call(
        "builtins", "exec", f"open({str(m)!r}, 'w')", protocol=4)), (META,), action="export"),
    Case("global-subprocess", _nemo2_raw(lambda m: files.global_call("subprocess", "getoutput", f"touch {m}")),
         (META,), action="export"),
    Case("global-torch-load", _nemo2_raw(lambda m: files.global_call("torch", "load", str(m))), (META,),
         action="export"),
    Case("global-megatron-other-name", _nemo2_raw(lambda m: files.global_call(
        "megatron.core.dist_checkpointing.strategies.torch", "os")), (META,), action="export"),
    Case("global-fake-megatron-module", _nemo2_raw(lambda m: files.global_call("megatron.evil", "MCoreMetadata")),
         (META,), action="export"),
    Case("global-dotted-gadget", _nemo2_raw(_dotted_gadget), (META,), action="export"),
    Case("persistent-id", _nemo2_raw(_persistent_id), (META,), action="export"),
    Case("truncated-pickle", _nemo2_raw(lambda m: _ours()[:500]), (META,), action="export"),
    Case("not-a-metadata", _nemo2_raw(_wrong_type), (META, "Metadata"), action="export"),
    Case("chunk-path-escapes", _nemo2_raw(_escaping_chunk), (META, "outside.distcp"), action="export"),
    Case("distcp-chunk-payload", _distcp_chunk, ("__0_0.distcp",), action="export"),
    Case("legacy-nemo-ckpt", _legacy_nemo, ("model_weights.ckpt",), action="export"),
    Case("hf-bin-zip", _hf_bin(legacy=False), ("pytorch_model.bin",), action="export",
         overrides=("precision=fp16",)),
    Case("hf-bin-zip-plan", _hf_bin(legacy=False), ("pytorch_model.bin",)),
    Case("hf-bin-legacy", _hf_bin(legacy=True), ("pytorch_model.bin",), action="export",
         overrides=("precision=fp16",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_pickle_is_refused_without_running(case: Case, cli_outcomes) -> None:
    assert_refused(cli_outcomes[case.id].result())


def _globals_named(data: bytes) -> set[tuple[str, str]]:
    """Every ``module.name`` a pickle imports, read with pickletools (no unpickling): ``GLOBAL``/``INST``
    carry it as text, ``STACK_GLOBAL`` takes the two strings pushed (or memo-fetched) before it."""
    import pickletools

    found, strings, memo = set(), [], {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            found.add(tuple(arg.split(" ", 1)))
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            strings.append(arg)
        elif opcode.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif opcode.name in ("BINGET", "LONG_BINGET") and arg in memo:
            strings.append(memo[arg])
        if opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return found


@pytest.mark.parametrize("source", ["nemo-written", "ours"])
def test_the_allowlist_admits_every_global_real_metadata_names(source: str) -> None:
    """Derivation of the allowlist: the globals NeMo 2.7.3 / megatron-core 0.15.3 (and our fixture) pickle."""
    import io

    from launcher.checkpoints import megatron

    data = files.real_metadata() if source == "nemo-written" else _ours()
    seen = []

    class Recording(megatron._Unpickler):
        def find_class(self, module: str, name: str) -> object:
            seen.append((module, name))
            return super().find_class(module, name)

    metadata = Recording(io.BytesIO(data)).load()
    assert type(metadata).__name__ == "Metadata" and metadata.state_dict_metadata
    assert set(seen) == _globals_named(data)
    if source == "nemo-written":
        assert set(seen) == {
            ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"),
            ("megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"),
            ("torch", "Size"), ("torch", "bfloat16"), ("torch.serialization", "_get_layout"),
            ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
            *(("torch.distributed.checkpoint.metadata", n) for n in (
                "BytesStorageMetadata", "ChunkStorageMetadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                "TensorStorageMetadata", "_MEM_FORMAT_ENCODING")),
            *(("torch.distributed.checkpoint.planner", n) for n in ("TensorWriteData", "WriteItem", "WriteItemType")),
        }
