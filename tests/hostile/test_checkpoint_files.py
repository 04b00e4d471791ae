"""Malformed checkpoint files, run through the CLI: HF config.json, safetensors headers, GGUF metadata,
NeMo YAML/JSON and .qnemo config.json. Each case must end in one line naming the file (and the key where
there is one), exit status 2, with nothing written (tests/hostile/cli.py says what else is held)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import yaml

from tests.fixtures import tiny_models as tiny
from tests.hostile import files
from tests.hostile.cli import Case, assert_refused

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _tensor(**entry: object) -> bytes:
    """A one-tensor safetensors file with ``entry`` replacing parts of a valid F32 [2] entry."""
    return files.safetensors_bytes({"t": {**F32, **entry}}, bytes(8))


def _hf_config_text(text: bytes):
    def build(case_dir: Path) -> Path:
        path = files.fixture("hf", case_dir / "hf")
        (path / CONFIG).write_bytes(text)
        return path
    return build


def _truncated_weights(case_dir: Path) -> Path:
    path = files.fixture("hf", case_dir / "hf")
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return path


def _gguf(**changes: object):
    return lambda case_dir: files.gguf_with(case_dir / "model.gguf", **changes)


def _gguf_bytes(damage: str):
    def build(case_dir: Path) -> Path:
        path = files.gguf_with(case_dir / "model.gguf")
        data = bytearray(path.read_bytes())
        if damage == "version":
            data[4:8] = struct.pack("<I", 99)
        elif damage == "kv-count":
            data[16:24] = struct.pack("<Q", 2**40)
        elif damage == "tensor-count":
            data[8:16] = struct.pack("<Q", 2**62)
        else:
            data = data[:100]
        path.write_bytes(bytes(data))
        return path
    return build


def _nemo2_config(**changes: object):
    """Our NeMo 2.0 dir with ``context/model.yaml``'s ``config`` keys changed (``None`` deletes)."""
    def build(case_dir: Path) -> Path:
        path = files.fixture("nemo2", case_dir / "nemo2")
        model_yaml = path / "context" / "model.yaml"
        model = yaml.safe_load(model_yaml.read_text())
        for key, value in changes.items():
            if value is None:
                model["config"].pop(key)
            else:
                model["config"][key] = value
        model_yaml.write_text(yaml.safe_dump(model))
        return path
    return build


def _nemo2_file(relative: str, text: str):
    def build(case_dir: Path) -> Path:
        path = files.fixture("nemo2", case_dir / "nemo2")
        (path / relative).write_text(text.replace("{marker}", str(files.marker(case_dir))))
        return path
    return build


def _nemo2_tensor_larger_than_its_chunks(case_dir: Path) -> Path:
    import torch


    path = files.fixture("nemo2", case_dir / "nemo2")
    weights = path / "weights"
    metadata = files.our_metadata(weights)
    meta = metadata.state_dict_metadata["module.embedding.word_embeddings.weight"]
    meta.size = torch.Size([meta.size[0] * 1000, meta.size[1]])
    (weights / ".metadata").write_bytes(tiny._pickle_as_megatron(metadata))
    return path


def _nemo1(**changes: object):
    def build(case_dir: Path) -> Path:
        return files.fixture("nemo", case_dir / "m.nemo", config=files.nemo1_config(**changes))
    return build


def _nemo1_text(text: str):
    return lambda case_dir: files.fixture("nemo", case_dir / "m.nemo", config=text)


def _qnemo(**changes: object):
    def build(case_dir: Path) -> Path:
        source = files.fixture("qnemo", case_dir / "source.qnemo")
        import tarfile

        with tarfile.open(source) as tar:
            config = json.load(tar.extractfile("./config.json"))
        out = files.retar(source, case_dir / "q.qnemo",
                          replace={"config.json": json.dumps({**config, **changes}).encode()})
        source.unlink()
        return out
    return build


def _qnemo_weights(data: bytes):
    def build(case_dir: Path) -> Path:
        source = files.fixture("qnemo", case_dir / "source.qnemo")
        out = files.retar(source, case_dir / "q.qnemo", replace={"rank0.safetensors": data})
        source.unlink()
        return out
    return build


MODEL_YAML = "context/model.yaml"
CASES = [
    # HF config.json: wrong types and impossible values, named by key
    Case("hf-heads-string", files.hf_with_config(num_attention_heads="four"), (f"{CONFIG}: num_attention_heads",)),
    Case("hf-layers-list", files.hf_with_config(num_hidden_layers=[2]), (f"{CONFIG}: num_hidden_layers",)),
    Case("hf-hidden-negative", files.hf_with_config(hidden_size=-128), (f"{CONFIG}: hidden_size",)),
    Case("hf-heads-zero", files.hf_with_config(num_attention_heads=0), (f"{CONFIG}: num_attention_heads",)),
    Case("hf-vocab-fraction", files.hf_with_config(vocab_size=320.5), (f"{CONFIG}: vocab_size",)),
    Case("hf-vocab-bool", files.hf_with_config(vocab_size=True), (f"{CONFIG}: vocab_size",)),
    Case("hf-hidden-1e300", files.hf_with_config(hidden_size=1e300), (f"{CONFIG}: hidden_size",)),
    Case("hf-architectures-string", files.hf_with_config(architectures="LlamaForCausalLM"),
         (f"{CONFIG}: architectures",)),
    Case("hf-rope-scaling-string", files.hf_with_config(rope_scaling="linear"), (f"{CONFIG}: rope_scaling",)),
    Case("hf-eps-string", files.hf_with_config(rms_norm_eps="small"), (f"{CONFIG}: rms_norm_eps",)),
    Case("hf-eps-nan", files.hf_with_config(rms_norm_eps=math.nan), (f"{CONFIG}: rms_norm_eps",)),
    Case("hf-positions-string", files.hf_with_config(max_position_embeddings="4k"),
         (f"{CONFIG}: max_position_embeddings",)),
    Case("hf-kv-heads-not-a-divisor", files.hf_with_config(num_key_value_heads=3), (CONFIG, "key/value heads")),
    Case("hf-tie-string", files.hf_with_config(tie_word_embeddings="yes"), (f"{CONFIG}: tie_word_embeddings",)),
    Case("hf-quantization-list", files.hf_with_config(quantization_config=["fp8"]),
         (f"{CONFIG}: quantization_config",)),
    Case("hf-dtype-number", files.hf_with_config(torch_dtype=16, dtype=None), (f"{CONFIG}: torch_dtype",)),
    Case("hf-config-array", _hf_config_text(b"[]"), (CONFIG, "JSON object")),
    Case("hf-config-binary", _hf_config_text(b"\xff\xfe\x00{"), (CONFIG, "cannot read JSON")),
    Case("hf-config-nested-100k", _hf_config_text(b"[" * 100_000), (CONFIG, "cannot read JSON")),
    # safetensors headers that lie: refused at plan (headers are read at inspection)
    Case("st-length-2p63", files.hf_with_weights(files.safetensors_bytes({}, length=2**63)), (WEIGHTS, "length")),
    Case("st-length-past-eof", files.hf_with_weights(files.safetensors_bytes({}, length=10**6)), (WEIGHTS, "length")),
    Case("st-header-not-json", files.hf_with_weights(files.safetensors_bytes(b"{not json")), (WEIGHTS,)),
    Case("st-header-list", files.hf_with_weights(files.safetensors_bytes([1, 2])), (WEIGHTS, "JSON object")),
    Case("st-unknown-dtype", files.hf_with_weights(_tensor(dtype="Q7")), (WEIGHTS, "unknown dtype")),
    Case("st-shape-offset-mismatch", files.hf_with_weights(_tensor(shape=[4, 4])), (WEIGHTS, "needs 64 bytes")),
    Case("st-overlapping", files.hf_with_weights(files.safetensors_bytes(
        {"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, bytes(12))), (WEIGHTS, "overlaps")),
    Case("st-out-of-range", files.hf_with_weights(_tensor(shape=[2**20], data_offsets=[0, 4 * 2**20])),
         (WEIGHTS, "cut short")),
    Case("st-negative-offset", files.hf_with_weights(_tensor(data_offsets=[-8, 0])), (WEIGHTS, "data_offsets")),
    Case("st-start-after-end", files.hf_with_weights(_tensor(data_offsets=[8, 0])), (WEIGHTS, "data_offsets")),
    Case("st-negative-dim", files.hf_with_weights(_tensor(shape=[-2])), (WEIGHTS, "shape")),
    Case("st-offsets-strings", files.hf_with_weights(_tensor(data_offsets=["0", "8"])), (WEIGHTS, "data_offsets")),
    Case("st-entry-not-object", files.hf_with_weights(files.safetensors_bytes({"t": 5})), (WEIGHTS, "not an object")),
    Case("st-shorter-than-8-bytes", files.hf_with_weights(b"\x01\x02"), (WEIGHTS,)),
    Case("st-truncated-data", _truncated_weights, (WEIGHTS, "cut short")),
    Case("st-length-2p63-export", files.hf_with_weights(files.safetensors_bytes({}, length=2**63)),
         (WEIGHTS, "length"), action="export", overrides=("precision=fp16",)),
    # GGUF: metadata of the wrong type, missing, or a header that lies
    Case("gguf-version-99", _gguf_bytes("version"), ("model.gguf", "cannot read GGUF")),
    Case("gguf-kv-count-2p40", _gguf_bytes("kv-count"), ("model.gguf", "cannot read GGUF")),
    Case("gguf-tensor-count-2p62", _gguf_bytes("tensor-count"), ("model.gguf", "cannot read GGUF")),
    Case("gguf-truncated", _gguf_bytes("truncated"), ("model.gguf", "cannot read GGUF")),
    Case("gguf-head-count-string", _gguf(llama__attention__head_count="four"),
         ("model.gguf: llama.attention.head_count",)),
    Case("gguf-head-count-per-layer", _gguf(llama__attention__head_count=[4, 4]),
         ("model.gguf: llama.attention.head_count",)),
    Case("gguf-head-count-zero", _gguf(llama__attention__head_count=0), ("model.gguf: llama.attention.head_count",)),
    Case("gguf-block-count-missing", _gguf(llama__block_count=None), ("model.gguf: llama.block_count", "missing")),
    Case("gguf-eps-string", _gguf(llama__attention__layer_norm_rms_epsilon="tiny"),
         ("model.gguf: llama.attention.layer_norm_rms_epsilon",)),
    # NeMo 2.0 context/model.yaml and weights/metadata.json
    Case("nemo2-layers-string", _nemo2_config(num_layers="two"), (f"{MODEL_YAML}: config: num_layers",)),
    Case("nemo2-vocab-missing", _nemo2_config(vocab_size=None), (f"{MODEL_YAML}: config: vocab_size", "missing")),
    Case("nemo2-params-dtype-string", _nemo2_config(params_dtype="torch.bfloat16"),
         (f"{MODEL_YAML}: config: params_dtype",)),
    Case("nemo2-gated-string", _nemo2_config(gated_linear_unit="yes"), (f"{MODEL_YAML}: config: gated_linear_unit",)),
    Case("nemo2-config-list", _nemo2_file(MODEL_YAML, "config: [1, 2]\n"), (MODEL_YAML, "'config' mapping")),
    Case("nemo2-invalid-yaml", _nemo2_file(MODEL_YAML, "config: {num_layers: [\n"), (MODEL_YAML, "cannot read YAML")),
    Case("nemo2-yaml-python-tag", _nemo2_file(MODEL_YAML, "config: !!python/object/apply:os.system "
                                                          "['touch {marker}']\n"), (MODEL_YAML, "cannot read YAML")),
    Case("nemo2-metadata-json-broken", _nemo2_file("weights/metadata.json", "{"), ("weights/metadata.json",)),
    Case("nemo2-backend-number", _nemo2_file("weights/metadata.json", '{"sharded_backend": 5}'),
         ("weights/metadata.json: sharded_backend",)),
    Case("nemo2-tensor-larger-than-chunks", _nemo2_tensor_larger_than_its_chunks, (".metadata", "needs more bytes")),
    # NeMo 1.0 model_config.yaml inside a .nemo
    Case("nemo1-hidden-string", _nemo1(hidden_size="big"), ("model_config.yaml: hidden_size",)),
    Case("nemo1-tokenizer-string", _nemo1(tokenizer="spm"), ("model_config.yaml: tokenizer",)),
    Case("nemo1-tp-string", _nemo1(tensor_model_parallel_size="x"), ("model_config.yaml: tensor_model_parallel_size",)),
    Case("nemo1-bias-string", _nemo1(bias="no"), ("model_config.yaml: bias",)),
    Case("nemo1-config-list", _nemo1_text("- 1\n- 2\n"), ("model_config.yaml", "not a mapping")),
    Case("nemo1-tokenizer-glob", _nemo1(tokenizer={"library": "sentencepiece", "model": "nemo:*"}),
         ("model_config.yaml", "not in the archive")),
    # .qnemo (TensorRT-LLM) config.json and rank0.safetensors
    Case("qnemo-heads-string", _qnemo(num_attention_heads="four"), ("config.json: num_attention_heads",)),
    Case("qnemo-mapping-list", _qnemo(mapping=[1]), ("config.json: mapping",)),
    Case("qnemo-mapping-tp-string", _qnemo(mapping={"tp_size": "2"}), ("config.json: mapping: tp_size",)),
    Case("qnemo-quantization-string", _qnemo(quantization="FP8"), ("config.json: quantization",)),
    Case("qnemo-weights-unknown-dtype", _qnemo_weights(_tensor(dtype="Q7")), ("rank0.safetensors", "unknown dtype")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_checkpoint_file_is_one_line(case: Case, cli_outcomes) -> None:
    assert_refused(cli_outcomes[case.id].result())


@pytest.mark.parametrize("name", ["/abs/outside", "../../../outside", "nemo_tokenizer/../../../../outside"])
def test_nemo2_tokenizer_path_never_leaves_the_checkpoint(tmp_path: Path, name: str) -> None:
    """A model.yaml naming a tokenizer outside ``context/`` (absolute or with ``..``) is not followed: the
    tokenizer would be copied into the deployment, so a checkpoint could pull in any directory."""
    from launcher.checkpoints import inspect

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("{}")
    path = files.fixture("nemo2", tmp_path / "ckpt" / "nemo2")
    model_yaml = path / "context" / "model.yaml"
    model = yaml.safe_load(model_yaml.read_text())
    model["tokenizer"]["pretrained_model_name"] = str(outside) if name.startswith("/") else name
    model_yaml.write_text(yaml.safe_dump(model))
    assert inspect(path).tokenizer == path / "context" / "nemo_tokenizer"
