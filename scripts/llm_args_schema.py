#!/usr/bin/env python3
"""Write an LlmArgs schema (``launcher/backends/trtllm/versions/llm_args-<version>.json``) from upstream's
pydantic source ``tensorrt_llm/llmapi/llm_args.py``, read with ``ast`` (nothing is imported or run).

For each class in ``CLASSES`` (and its bases defined in the same file) the schema holds every annotated
field, ``name -> annotation`` as written in the source; private (``_``) names and ``ClassVar`` are left
out. Also the ``decoding_type`` literals of the speculative-decoding configs.

    python scripts/llm_args_schema.py path/to/llm_args.py 1.2.1 "NVIDIA/TensorRT-LLM@<commit>"
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "launcher" / "backends" / "trtllm" / "versions"
CLASSES = {"TorchLlmArgs": "TorchLlmArgs", "KvCacheConfig": "KvCacheConfig", "CudaGraphConfig": "CudaGraphConfig",
           "DecodingBaseConfig": "DecodingBaseConfig"}


def class_fields(tree: ast.Module) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    fields, bases = {}, {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases[node.name] = [ast.unparse(base) for base in node.bases]
        own = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                annotation = ast.unparse(item.annotation)
                if not item.target.id.startswith("_") and not annotation.startswith("ClassVar"):
                    own[item.target.id] = annotation
        fields[node.name] = own
    return fields, bases


def resolved(name: str, fields: dict, bases: dict) -> dict[str, str]:
    merged: dict[str, str] = {}
    for base in bases.get(name, []):
        if base in fields:
            merged.update(resolved(base, fields, bases))
    merged.update(fields.get(name, {}))
    return merged


def schema(source: str) -> dict:
    tree = ast.parse(source)
    fields, bases = class_fields(tree)
    decoding = sorted({item.value.value for node in tree.body if isinstance(node, ast.ClassDef)
                       for item in node.body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                       and item.target.id == "decoding_type" and isinstance(item.value, ast.Constant)})
    return {"classes": {key: resolved(name, fields, bases) for key, name in CLASSES.items() if name in fields},
            "decoding_types": decoding}


def main() -> None:
    path, version, source = sys.argv[1], sys.argv[2], sys.argv[3]
    out = OUT / f"llm_args-{version}.json"
    out.write_text(json.dumps({"version": version, "source": source, "generated_by": "scripts/llm_args_schema.py",
                               **schema(Path(path).read_text())}, indent=1, sort_keys=True) + "\n")
    print(out)


if __name__ == "__main__":
    main()
