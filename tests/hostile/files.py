"""Writers of hostile checkpoint files, each built from a valid tiny fixture (``tests/fixtures``) or by hand.

These are our own files, written to break readers: pickles that call ``open``/``os.system`` on a marker
in the case directory, tars with bombs, safetensors and GGUF with lying headers, configs with wrong types.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import tiny_models as tiny
from tests.hostile.cli import MARKER

NEMO_WRITTEN = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "nemo-written" / "llama-gqa"


_WRITTEN: dict[tuple, Path] = {}


def fixture(writer: str, target: Path, **kwargs: object) -> Path:
    """``tiny_models.write_<writer>(target, **kwargs)``: written once per session, then copied (a copy takes
    milliseconds, writing a fixture a good part of a second)."""
    key = (writer, tuple(sorted(kwargs.items())))
    if key not in _WRITTEN:
        scratch = Path(tempfile.mkdtemp(prefix="hostile-fixture-"))
        atexit.register(shutil.rmtree, scratch, True)
        _WRITTEN[key] = getattr(tiny, f"write_{writer}")(scratch / target.name, **kwargs)
    source = _WRITTEN[key]
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


def marker(case_dir: Path, suffix: str = "") -> Path:
    """Where a payload would leave its mark: next to the input, inside the case directory."""
    return case_dir.parent / f"{MARKER}{suffix}"


# ------------------------------------------------------------------------------------------ pickles
class OpenPayload:
    """Unpickling this runs ``open(marker, "w")``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.target), "w"))


class SystemPayload:
    """Unpickling this runs ``os.system("touch marker")`` (pickled as ``posix.system``)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.target}",))


def global_call(module: str, name: str, *args: str, protocol: int = 2) -> bytes:
    """A hand-written pickle that imports ``module.name`` and calls it with string ``args``.

    Protocol 0 uses ``GLOBAL`` text opcodes (``c``), 2 uses ``GLOBAL`` + ``BINUNICODE``, 4 uses ``STACK_GLOBAL``.
    """
    def text(value: str) -> bytes:
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    if protocol == 0:
        return (f"c{module}\n{name}\n(" + "".join(f"V{a}\np{i}\n" for i, a in enumerate(args)) + "tR.").encode()
    if protocol == 4:
        head = b"\x80\x04" + text(module) + text(name) + b"\x93"
    else:
        head = b"\x80\x02" + f"c{module}\n{name}\n".encode()
    return head + b"(" + b"".join(text(a) for a in args) + b"tR."


def trojan(pickle_bytes: bytes, module: str, name: str, *args: str) -> bytes:
    """``pickle_bytes`` that still loads to the same object but first calls ``module.name(*args)``.

    The call is spliced in before ``STOP`` and its result popped, as a trojaned checkpoint would be.
    """
    assert pickle_bytes.endswith(b".")
    call = global_call(module, name, *args, protocol=2)[2:-1]  # without PROTO and STOP
    return pickle_bytes[:-1] + call + b"0."


def our_metadata(weights: Path) -> object:
    """torch's ``Metadata`` of one of our fixtures' weights directories, to change and pickle again (an
    unrestricted unpickler: the file is ours, written by tests/fixtures/tiny_models.py)."""
    class Ours(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module.startswith("megatron."):
                from torch.distributed.checkpoint.metadata import Metadata

                return Metadata
            return super().find_class(module, name)

    with open(weights / ".metadata", "rb") as f:
        return Ours(f).load()


def real_metadata() -> bytes:
    """The ``.metadata`` pickle NeMo 2.7.3 (megatron-core 0.15.3) wrote for the shared fixture."""
    return (NEMO_WRITTEN / "nemo2" / "weights" / ".metadata").read_bytes()


def nemo2_with_metadata(case_dir: Path, data: bytes, *, real: bool = False) -> Path:
    """A NeMo 2.0 directory (ours, or a copy of the NeMo-written one) whose ``weights/.metadata`` is ``data``."""
    if real:
        path = case_dir / "nemo2"
        shutil.copytree(NEMO_WRITTEN / "nemo2", path)
        for p in [path, *path.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    else:
        path = fixture("nemo2", case_dir / "nemo2")
    (path / "weights" / ".metadata").write_bytes(data)
    return path


NEMO1_TOKENIZER = "1d57c686069742b7bebd73c1071d70ce_tokenizer.model"  # the member name tiny.write_nemo uses


def nemo1_config(**changes: Any) -> str:
    """Our NeMo 1.0 ``model_config.yaml`` with top-level keys changed (``None`` deletes one)."""
    config = yaml.safe_load(tiny._nemo1_config(tie=False, tokenizer_member=NEMO1_TOKENIZER))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return yaml.safe_dump(config)


def retar(source: Path, target: Path, *, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = (),
          add: list[tuple[tarfile.TarInfo, bytes | None]] | None = None, mode: str = "w") -> Path:
    """Copy tar ``source`` to ``target`` with members replaced (by name without ``./``), dropped or added."""
    replace = dict(replace or {})
    with tarfile.open(source) as src, tarfile.open(target, mode) as dst:
        for member in src.getmembers():
            name = member.name.removeprefix("./")
            if name in drop:
                continue
            if name in replace:
                data = replace.pop(name)
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name, data in replace.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
        for info, data in add or []:
            dst.addfile(info, io.BytesIO(data) if data is not None else None)
    return target


def nemo_dist_without_tokenizer(case_dir: Path, metadata: bytes | None = None, name: str = "m.nemo") -> Path:
    """A dist-ckpt ``.nemo`` with an HF (not sentencepiece) tokenizer entry: its vocabulary size is read
    from ``model_weights/.metadata`` at ``action=plan``; ``metadata`` replaces that pickle."""
    source = fixture("nemo", case_dir / "source.nemo", dist=True)
    config = nemo1_config(tokenizer={"library": "huggingface", "type": "x", "model": None})
    replace = {"model_config.yaml": config.encode()}
    if metadata is not None:
        replace["model_weights/.metadata"] = metadata
    out = retar(source, case_dir / name, replace=replace)
    source.unlink()
    return out


def legacy_nemo_with_state(case_dir: Path, state: object, name: str = "legacy.nemo") -> Path:
    """A legacy ``.nemo`` whose ``model_weights.ckpt`` is ``torch.save(state)``."""
    import torch

    source = fixture("nemo", case_dir / "source.nemo")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out = retar(source, case_dir / name, replace={"model_weights.ckpt": buffer.getvalue()})
    source.unlink()
    return out


# -------------------------------------------------------------------------------------- safetensors
def safetensors_bytes(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length (``length`` to lie), JSON header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def hf_with_weights(data: bytes) -> Callable[[Path], Path]:
    """An HF directory (ours) whose ``model.safetensors`` is ``data``."""
    def build(case_dir: Path) -> Path:
        path = fixture("hf", case_dir / "hf")
        (path / "model.safetensors").write_bytes(data)
        return path
    return build


def hf_with_config(**changes: Any) -> Callable[[Path], Path]:
    """An HF directory (ours) whose ``config.json`` has keys changed."""
    def build(case_dir: Path) -> Path:
        path = fixture("hf", case_dir / "hf")
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **changes}))
        return path
    return build


# --------------------------------------------------------------------------------------------- GGUF
def gguf_with(path: Path, **changes: object) -> Path:
    """A metadata-only llama GGUF (ours, via gguf.GGUFWriter) with keys changed: a value's Python type
    picks its GGUF type (str, int -> UINT32, float, list -> ARRAY), ``None`` leaves the key out.
    Keys use ``__`` for ``.`` (``llama__attention__head_count``)."""
    import gguf

    metadata: dict[str, object] = {
        "general.name": "tiny-llama", "llama.context_length": 256, "llama.embedding_length": tiny.HIDDEN,
        "llama.block_count": tiny.LAYERS, "llama.feed_forward_length": tiny.FFN,
        "llama.attention.head_count": tiny.HEADS, "llama.attention.head_count_kv": tiny.KV_HEADS,
        "llama.rope.freq_base": 10000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": tiny.VOCAB,
    }
    metadata.update({key.replace("__", "."): value for key, value in changes.items()})
    writer = gguf.GGUFWriter(str(path), str(metadata.pop("general.architecture", "llama")))
    types = {str: gguf.GGUFValueType.STRING, int: gguf.GGUFValueType.UINT32, float: gguf.GGUFValueType.FLOAT32,
             bool: gguf.GGUFValueType.BOOL}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, types[type(value)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
