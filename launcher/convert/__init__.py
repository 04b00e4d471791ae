"""Checkpoint conversions: a checkpoint's ``(hf_name, tensor)`` stream into what a backend consumes."""

from launcher.convert.hf_writer import hf_config, hf_names, hf_tensors, resolve_dtype, save_tokenizer, to_hf
from launcher.convert.shards import ShardWriter

__all__ = ["ShardWriter", "hf_config", "hf_names", "hf_tensors", "resolve_dtype", "save_tokenizer", "to_hf"]
