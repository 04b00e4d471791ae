"""Fuzzing every byte-level reader with Hypothesis inside a fixed budget (tests/hostile/fuzzing.py): safetensors
headers, GGUF, tar/.nemo/.qnemo, torch-DCP ``.metadata``, NeMo YAML configs, HF/TensorRT-LLM config.json.

Inputs are mutations of valid files (ours, and the NeMo-written ``.metadata``) and generated structures;
the only allowed outcomes are a parsed result or one ``LauncherError`` line.
"""

from __future__ import annotations

import atexit
import io
import json
import pickle
import shutil
import struct
import tarfile
import tempfile
from functools import cache
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from launcher.checkpoints import gguf, hf, inspect, megatron, nemo, nemo2, qnemo
from launcher.checkpoints.archive import Archive
from launcher.checkpoints.base import SAFETENSORS_ITEMSIZE, Fields, read_safetensors, safetensors_index
from tests.fixtures import tiny_models as tiny
from tests.hostile import files
from tests.hostile.fuzzing import FUZZ, holds

WORK = Path(tempfile.mkdtemp(prefix="hostile-fuzz-"))  # one file per reader, rewritten for each input
atexit.register(shutil.rmtree, WORK, True)

# ------------------------------------------------------------------------------------------- values
EXTREME_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
ints = st.one_of(st.integers(-3, 600), st.sampled_from(EXTREME_INTS), st.integers(-(2**70), 2**70))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)


def mutated(base: bytes, hot: list[int] | None = None) -> st.SearchStrategy[bytes]:
    """``base`` with up to 6 edits (byte flips, extreme integers written over, cuts, inserts), at ``hot``
    offsets (headers) or anywhere."""
    position = st.integers(0, max(len(base) - 1, 0))
    if hot:
        position = st.one_of(position, st.builds(lambda h, k: min(h + k, len(base) - 1), st.sampled_from(hot),
                                                 st.integers(0, 511)))
    edit = st.one_of(
        st.tuples(st.just("byte"), position, st.integers(0, 255)),
        st.tuples(st.just("int"), position, st.sampled_from(EXTREME_INTS).map(lambda v: v % 2**64)),
        st.tuples(st.just("cut"), position, st.just(0)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    )

    def apply(edits: list[tuple]) -> bytes:
        data = bytearray(base)
        for kind, at, value in edits:
            at = min(at, len(data))
            if kind == "byte" and at < len(data):
                data[at] = value
            elif kind == "int":
                data[at:at + 8] = struct.pack("<Q", value)
            elif kind == "cut":
                del data[at:]
            elif kind == "insert":
                data[at:at] = value
        return bytes(data)

    return st.lists(edit, min_size=1, max_size=6).map(apply)


def _write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------------- safetensors
def _consume_safetensors(data: bytes) -> None:
    f = io.BytesIO(data)
    entries = safetensors_index(f, "fuzz.safetensors")
    for _ in read_safetensors(f, "fuzz.safetensors", entries):
        pass


small = st.integers(0, 64)
safetensors_entry = st.one_of(values, st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from([*SAFETENSORS_ITEMSIZE, "Q7", "f32", ""]), scalars),
    "shape": st.one_of(st.lists(st.one_of(small, ints), max_size=4), values),
    "data_offsets": st.one_of(st.lists(st.one_of(small, ints), max_size=3), values),
}))
safetensors_file = st.builds(
    lambda header, length, data: files.safetensors_bytes(json.dumps(header).encode(), data, length=length),
    st.dictionaries(st.text(max_size=6), safetensors_entry, max_size=4),
    st.one_of(st.none(), st.sampled_from(EXTREME_INTS).map(lambda v: v % 2**64)),
    st.binary(max_size=300),
)


@FUZZ
@given(st.one_of(safetensors_file, st.binary(max_size=200)))
def test_fuzz_safetensors_header(data: bytes) -> None:
    holds("safetensors", lambda: _consume_safetensors(data))


# ---------------------------------------------------------------------------------------------- GGUF
@cache
def _gguf_base() -> tuple[bytes, list[int]]:
    path = files.gguf_with(WORK / "base.gguf")
    data = path.read_bytes()
    return data, list(range(0, min(len(data), 4096), 512))


@FUZZ
@given(st.data())
def test_fuzz_gguf(data: st.DataObject) -> None:
    base, hot = _gguf_base()
    path = _write("fuzz.gguf", data.draw(mutated(base, hot)))
    holds("gguf", lambda: list(gguf.read(path).tensors()))


# ----------------------------------------------------------------------------------------- tar files
@cache
def _tar_bases() -> dict[str, tuple[bytes, list[int]]]:
    bases = {}
    for name, path in (("nemo", tiny.write_nemo(WORK / "base.nemo")),
                       ("nemo-dist", tiny.write_nemo(WORK / "base-dist.nemo", dist=True)),
                       ("qnemo", tiny.write_qnemo(WORK / "base.qnemo"))):
        with tarfile.open(path) as tar:
            hot = [m.offset for m in tar.getmembers()]
        bases[name] = (path.read_bytes(), hot)
    bases["nemo-gz"] = (tiny.write_nemo(WORK / "base-gz.nemo", gzip=True).read_bytes(), [0])
    return bases


def _inspect_and_stream(path: Path) -> None:
    checkpoint = inspect(path)
    if checkpoint.format == "qnemo":  # qnemo streams TensorRT-LLM tensors; the others HF ones
        next(iter(checkpoint.tensors()), None)
    else:
        for _ in checkpoint.tensors():
            pass


@FUZZ
@given(st.sampled_from(["nemo", "nemo-dist", "qnemo", "nemo-gz"]), st.data())
def test_fuzz_tar_mutations(kind: str, data: st.DataObject) -> None:
    base, hot = _tar_bases()[kind]
    path = _write("fuzz.nemo", data.draw(mutated(base, hot)))
    holds("tar (mutated)", lambda: _inspect_and_stream(path))


MEMBER_NAMES = ["model_config.yaml", "./model_config.yaml", "config.json", "rank0.safetensors", "model_weights.ckpt",
                "model_weights/.metadata", "model_weights/metadata.json", "../x", "/abs", "a/../../b", "x\ny", ".",
                "./", "tokenizer.json", files.NEMO1_TOKENIZER, "d/", ""]
member = st.tuples(
    st.one_of(st.sampled_from(MEMBER_NAMES), st.text(max_size=12)),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                     tarfile.FIFOTYPE, tarfile.CONTTYPE]),
    st.one_of(st.sampled_from(["", "x", "../../etc/passwd", "/etc/passwd", "model_config.yaml"]), st.text(max_size=8)),
    st.one_of(st.binary(max_size=64), st.sampled_from([b"hidden_size: 128\n", b"{}", b"[1", b"tokenizer: 5\n"])),
)


def _tar_bytes(members: list[tuple], tar_format: int, compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w", format=tar_format) as tar:
        for name, kind, linkname, content in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.size = len(content) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
            try:
                tar.addfile(info, io.BytesIO(content) if info.size else None)
            except ValueError:  # a name or link this format cannot store
                continue
    return buffer.getvalue()


@FUZZ
@given(st.lists(member, max_size=6), st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]),
       st.booleans())
def test_fuzz_tar_generated(members: list[tuple], tar_format: int, compress: bool) -> None:
    path = _write("fuzz-generated.nemo", _tar_bytes(members, tar_format, compress))
    holds("tar (generated)", lambda: _inspect_and_stream(path))


# ----------------------------------------------------------------------------------- torch-DCP metadata
@cache
def _dcp_bases() -> dict[str, tuple[bytes, Path]]:
    ours = tiny.write_nemo2(WORK / "nemo2") / "weights"
    real = files.NEMO_WRITTEN / "nemo2" / "weights"
    return {"ours": ((ours / ".metadata").read_bytes(), ours), "nemo-written": (files.real_metadata(), real)}


def _read_dcp(metadata_bytes: bytes, weights: Path) -> None:
    def open_fn(name: str):
        return io.BytesIO(metadata_bytes) if name == ".metadata" else (weights / name).open("rb")

    metadata = megatron.read_metadata(open_fn, "fuzz/weights")
    megatron.vocab_rows(metadata, "module.embedding.word_embeddings.weight")
    for _ in megatron.dist_tensors(open_fn, "fuzz/weights", 2, metadata):
        pass


@FUZZ
@given(st.sampled_from(["ours", "nemo-written"]), st.data())
def test_fuzz_dcp_metadata_mutations(source: str, data: st.DataObject) -> None:
    base, weights = _dcp_bases()[source]
    metadata = data.draw(mutated(base))
    holds("dcp .metadata (mutated)", lambda: _read_dcp(metadata, weights))


def _generated_metadata(entries: list[tuple], storage: list[tuple]) -> bytes:
    """A pickle of allowlisted classes holding fuzzed fields (sizes, offsets, file names, dtypes)."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    def size(value: object) -> object:
        return torch.Size(value) if isinstance(value, list) and all(
            isinstance(v, int) and 0 <= v < 2**63 for v in value) else value

    state = {}
    for fqn, dtype, shape, is_bytes in entries:
        chunk = ChunkStorageMetadata(size(shape), size(shape))
        state[fqn] = BytesStorageMetadata() if is_bytes else TensorStorageMetadata(
            TensorProperties(dtype=getattr(torch, dtype)), size(shape), [chunk])
    chunks = {MetadataIndex(fqn, size(offset)): _StorageInfo(path, start, length)
              for fqn, offset, path, start, length in storage}
    return pickle.dumps(Metadata(state, storage_data=chunks))


FQNS = ["module.embedding.word_embeddings.weight", "module.decoder.layers.mlp.linear_fc1.weight",
        "module.decoder.final_layernorm.weight", "module.output_layer.weight", "x"]
DISTCP = ["__0_0.distcp", "__0_1.distcp", "../__0_0.distcp", "", ".metadata", "missing.distcp"]
dcp_entry = st.tuples(st.sampled_from(FQNS), st.sampled_from(["float32", "bfloat16", "int8", "bool"]),
                      st.one_of(st.lists(st.one_of(small, ints), max_size=3), values), st.booleans())
dcp_storage = st.tuples(st.sampled_from(FQNS), st.one_of(st.none(), st.lists(st.one_of(small, ints), max_size=3)),
                        st.one_of(st.sampled_from(DISTCP), scalars), st.one_of(small, ints, scalars),
                        st.one_of(st.integers(0, 4096), ints, scalars))


@FUZZ
@given(st.lists(dcp_entry, max_size=4), st.lists(dcp_storage, max_size=4))
def test_fuzz_dcp_metadata_generated(entries: list[tuple], storage: list[tuple]) -> None:
    _, weights = _dcp_bases()["ours"]
    holds("dcp .metadata (generated)", lambda: _read_dcp(_generated_metadata(entries, storage), weights))


# -------------------------------------------------------------------------------------- config files
def changed(base: dict, keys: list[str]) -> st.SearchStrategy[dict]:
    """``base`` with some of ``keys`` (and unknown ones) set to fuzzed values or removed."""
    return st.builds(lambda updates, removed: {**{k: v for k, v in base.items() if k not in removed}, **updates},
                     st.dictionaries(st.sampled_from([*keys, "x"]), values, max_size=5),
                     st.sets(st.sampled_from(keys), max_size=3))


@cache
def _configs() -> dict[str, dict]:
    hf_dir = tiny.write_hf(WORK / "hf")
    with tarfile.open(tiny.write_qnemo(WORK / "config.qnemo")) as tar:
        qnemo_config = json.load(tar.extractfile("./config.json"))
    return {
        "hf": json.loads((hf_dir / "config.json").read_text()),
        "qnemo": qnemo_config,
        "nemo2": yaml.safe_load(tiny._nemo2_model_yaml(tie=False, arch="LlamaForCausalLM")),
        "nemo1": yaml.safe_load(tiny._nemo1_config(tie=False, tokenizer_member=files.NEMO1_TOKENIZER)),
    }


@FUZZ
@given(st.data())
def test_fuzz_hf_config(data: st.DataObject) -> None:
    base = _configs()["hf"]
    config = data.draw(st.one_of(changed(base, list(base)), values))

    def read() -> None:
        fields = Fields(config, "fuzz/config.json")
        hf.arch_from_config(fields)
        fields.mapping("quantization_config")

    holds("hf config.json", read)


@FUZZ
@given(st.data())
def test_fuzz_qnemo_config(data: st.DataObject) -> None:
    base = _configs()["qnemo"]
    config = data.draw(st.one_of(changed(base, list(base)), values))

    def read() -> None:
        fields = Fields(config, "fuzz.qnemo:config.json")
        qnemo.arch_from_config(fields)
        qnemo._mapping(fields)
        fields.mapping("quantization")

    holds("qnemo config.json", read)


@FUZZ
@given(st.data())
def test_fuzz_nemo2_model_yaml(data: st.DataObject) -> None:
    base = _configs()["nemo2"]
    config = data.draw(changed(base["config"], list(base["config"])))
    model = data.draw(st.one_of(changed({**base, "config": config}, ["_target_", "tokenizer", "config"]), values))

    def read() -> None:
        fields = Fields(model, "fuzz/context/model.yaml")
        nemo2.arch_from_model_yaml(fields, fields.where)
        nemo2.tokenizer_path(WORK / "context", fields.child("tokenizer"))

    holds("nemo2 model.yaml", read)


@cache
def _nemo1_members() -> Archive:
    """A directory standing in for a .nemo's members: just the tokenizer file the base config names."""
    (WORK / "nemo1").mkdir()
    (WORK / "nemo1" / files.NEMO1_TOKENIZER).write_bytes(b"not read")
    return Archive(WORK / "nemo1")


@FUZZ
@given(st.data())
def test_fuzz_nemo1_model_config(data: st.DataObject) -> None:
    base = _configs()["nemo1"]
    config = data.draw(st.one_of(changed(base, list(base)), values))

    def read() -> None:
        fields = Fields(config, "fuzz.nemo:model_config.yaml")
        nemo._tokenizer(_nemo1_members(), fields)
        nemo.arch_from_config(fields, vocab_size=tiny.VOCAB)

    holds("nemo1 model_config.yaml", read)


@FUZZ
@given(st.one_of(st.text(max_size=300), st.builds(yaml.safe_dump, values),
                 st.builds(lambda d: yaml.safe_dump({"config": d}), values)))
def test_fuzz_yaml_and_json_text(text: str) -> None:
    """Raw text through the YAML and JSON file readers (NeMo 2.0 model.yaml, HF config.json)."""
    raw = text.encode("utf-8", "surrogatepass")
    yaml_path, json_path = _write("model.yaml", raw), _write("config.json", raw)

    def read() -> None:
        model = nemo2._load_yaml(yaml_path)
        nemo2.arch_from_model_yaml(model, str(yaml_path))

    holds("yaml text", read)
    holds("json text", lambda: hf.arch_from_config(Fields(hf.read_json(json_path), str(json_path))))
