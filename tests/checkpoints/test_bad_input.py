"""Bad input: each case is one clear ``LauncherError`` line naming the file or key, never a traceback."""

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest
import torch

from launcher.checkpoints import detect, inspect
from launcher.convert import to_hf
from launcher.errors import LauncherError
from tests.fixtures.tiny_models import write_gguf, write_hf, write_nemo, write_nemo2, write_qnemo


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _convert(path: Path, tmp_path: Path) -> None:
    to_hf(inspect(path), tmp_path / "out")


def _one_line_error(excinfo: pytest.ExceptionInfo[LauncherError], names: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and names in message, message
    return message


def test_truncated_safetensors(tmp_path: Path) -> None:
    source = write_hf(tmp_path / "hf")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LauncherError) as excinfo:
        _convert(source, tmp_path)
    assert "the file is cut short" in _one_line_error(excinfo, str(weights))


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.nemo"
    with tarfile.open(path, "w") as tar:
        config = tarfile.TarInfo("./model_config.yaml")
        config.size = 2
        tar.addfile(config, io.BytesIO(b"{}"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(("member", "why"), [
    (tarfile.TarInfo("../escaped.txt"), "'..' in its path"),
    (tarfile.TarInfo("./a/../../escaped.txt"), "'..' in its path"),
    (tarfile.TarInfo("/tmp/escaped-absolute.txt"), "absolute path"),
    (_symlink("./link", "../../etc/passwd"), "outside the archive"),
    (_symlink("./link", "/etc/passwd"), "outside the archive"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute"])
@pytest.mark.parametrize("gzip", [False, True], ids=["tar", "gz"])
def test_unsafe_tar_members_are_refused_and_nothing_is_extracted(tmp_path: Path, member: tarfile.TarInfo, why: str,
                                                                   gzip: bool) -> None:
    path = _tar_with(tmp_path, member)
    if gzip:
        raw = path.read_bytes()
        import gzip as gz

        path.write_bytes(gz.compress(raw))
    before = set(tmp_path.parent.rglob("*"))
    for action in (detect, inspect):
        with pytest.raises(LauncherError) as excinfo:
            action(path)
        assert why in _one_line_error(excinfo, str(path))
    assert set(tmp_path.parent.rglob("*")) == before
    assert not Path("/tmp/escaped-absolute.txt").exists()


def test_nemo_without_model_config(tmp_path: Path) -> None:
    path = tmp_path / "no-config.nemo"
    source = write_nemo(tmp_path / "ok.nemo")
    with tarfile.open(source) as src, tarfile.open(path, "w") as dst:
        for member in src.getmembers():
            if not member.name.endswith("model_config.yaml"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    from launcher.spec import CheckpointFormat

    with pytest.raises(LauncherError) as excinfo:
        inspect(path, CheckpointFormat.nemo)
    assert "no model_config.yaml inside" in _one_line_error(excinfo, str(path))


def test_nemo2_missing_weights_metadata(tmp_path: Path) -> None:
    source = write_nemo2(tmp_path / "nemo2")
    (source / "weights" / ".metadata").unlink()
    with pytest.raises(LauncherError) as excinfo:
        inspect(source)
    _one_line_error(excinfo, str(source / "weights" / ".metadata"))


@pytest.mark.parametrize("writer", ["gguf", "nemo2", "nemo2-gemma2"])
def test_family_that_cannot_be_converted_is_named(tmp_path: Path, writer: str) -> None:
    """GGUF and NeMo weights are converted to HF by family: an unknown one (or NeMo's Gemma 2, whose layout no
    NeMo-written file here shows) is one line naming the key."""
    if writer == "gguf":
        path = write_gguf(tmp_path / "gpt2.gguf", gguf_arch="gpt2")
    else:
        path = write_nemo2(tmp_path / "nemo2")
        model_yaml = path / "context" / "model.yaml"
        target = "gemma2.Gemma2Model" if writer == "nemo2-gemma2" else "gpt.GPTModel"
        model_yaml.write_text(model_yaml.read_text().replace("llama.LlamaModel", target))
    with pytest.raises(LauncherError) as excinfo:
        inspect(path)
    message = _one_line_error(excinfo, "cannot be converted by llm-launch")
    assert ("gpt" in message.lower() or "Gemma2Model" in message)
    assert "general.architecture" in message or "_target_" in message


@pytest.mark.parametrize("writer", ["hf", "qnemo"])
def test_any_architecture_is_read_where_weights_are_served_as_they_are(tmp_path: Path, writer: str) -> None:
    """HF and TensorRT-LLM checkpoints go to the engines unconverted: any architecture reads; whether the chosen
    engine loads it is the plan's question (tests/families)."""
    if writer == "hf":
        path = write_hf(tmp_path / "gpt2")
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    else:
        path = write_qnemo(tmp_path / "gpt2.qnemo", architecture="GPT2LMHeadModel")
    assert inspect(path).arch.architecture == "GPT2LMHeadModel"


@pytest.mark.parametrize("container", ["hf-bin", "nemo-legacy"])
def test_malicious_pickle_fails_cleanly_without_running(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    if container == "hf-bin":
        path = write_hf(tmp_path / "hf", weights="bin")
        torch.save({"model.embed_tokens.weight": _Payload(marker)}, path / "pytorch_model.bin")
        bad_file = str(path / "pytorch_model.bin")
    else:
        path = write_nemo(tmp_path / "evil.nemo", config=None)
        evil = tmp_path / "evil"
        evil.mkdir()
        with tarfile.open(path) as tar:
            tar.extractall(evil, filter="data")
        torch.save({"state_dict": _Payload(marker)}, evil / "model_weights.ckpt")
        with tarfile.open(path, "w") as tar:
            tar.add(evil, arcname=".")
        bad_file = "model_weights.ckpt"
    with pytest.raises(LauncherError) as excinfo:
        _convert(path, tmp_path)
    assert "cannot read the torch checkpoint" in _one_line_error(excinfo, bad_file)
    assert not marker.exists()


def test_legacy_format_pickle_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_hf(tmp_path / "hf", weights="bin")
    torch.save({"x": _Payload(marker)}, path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(LauncherError):
        _convert(path, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["version", "kv-count", "truncated"])
def test_gguf_with_a_corrupt_header(tmp_path: Path, damage: str) -> None:
    path = write_gguf(tmp_path / "bad.gguf")
    data = bytearray(path.read_bytes())
    if damage == "version":
        data[4:8] = struct.pack("<I", 99)
    elif damage == "kv-count":
        data[16:24] = struct.pack("<Q", 2**40)
    else:
        data = data[:200]
    path.write_bytes(bytes(data))
    assert detect(path).value == "gguf"  # the magic is intact
    with pytest.raises(LauncherError) as excinfo:
        inspect(path)
    assert "cannot read GGUF" in _one_line_error(excinfo, str(path))


def test_qnemo_cannot_become_an_hf_model(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="TensorRT-LLM weights"):
        _convert(write_qnemo(tmp_path / "q.qnemo"), tmp_path)


def test_nemo_config_that_is_not_llama_names_the_key(tmp_path: Path) -> None:
    path = write_nemo(tmp_path / "gelu.nemo", config="activation: gelu\nnormalization: rmsnorm\n"
                      "position_embedding_type: rope\nbias: false\n")
    with pytest.raises(LauncherError) as excinfo:
        inspect(path)
    assert "activation" in _one_line_error(excinfo, "model_config.yaml")


def test_temporary_extraction_is_cleaned_up(tmp_path: Path) -> None:
    import gc

    checkpoint = inspect(write_nemo(tmp_path / "gz.nemo", gzip=True))
    scratch = checkpoint.tokenizer.parents[1]
    assert scratch.name.startswith("llm-launch-") and scratch.exists()
    del checkpoint
    gc.collect()
    assert not scratch.exists()
