"""Write launcher/checkpoints/architectures.json: the model architectures each serving engine loads.

    python scripts/engine_architectures.py                  # rewrite from the installed vllm and transformers
    python scripts/engine_architectures.py --check          # exit 1 if the committed table is stale
    python scripts/engine_architectures.py --trtllm-source DIR --trtllm-ref REF   # also re-read TensorRT-LLM

Importing vllm and transformers takes seconds, so the launcher reads this table instead of the engines.
- ``transformers``: the class names of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (what ``AutoModelForCausalLM`` loads).
- ``vllm``: the keys of vLLM's registry of generative models, ``_TEXT_GENERATION_MODELS`` and
  ``_MULTIMODAL_MODELS`` (pooling, reward and draft models are left out).
- ``trtllm-llmapi`` (PyTorch backend) and ``trtllm-engine`` (legacy TensorRT engines): TensorRT-LLM is not
  installed here, so they are parsed (``ast``, nothing imported or run) from a TensorRT-LLM source tree: the
  keys of ``tensorrt_llm/_torch/models/_arch_index.py`` ``MODEL_ARCH_TO_MODULE`` (or, in trees without that index,
  every ``@register_auto_model("...")`` in ``tensorrt_llm/_torch/models/modeling_*.py``) and of
  ``MODEL_MAP`` in ``tensorrt_llm/models/__init__.py``. Without ``--trtllm-source`` those two entries are kept.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "launcher" / "checkpoints" / "architectures.json"
TRTLLM_ENGINES = ("trtllm-llmapi", "trtllm-engine")


def transformers_entry() -> dict:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return {"version": transformers.__version__,
            "source": "transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES (values)",
            "architectures": sorted(names)}


def vllm_entry() -> dict:
    import vllm
    from vllm.model_executor.models import registry

    names = set(registry._TEXT_GENERATION_MODELS) | set(registry._MULTIMODAL_MODELS)
    return {"version": vllm.__version__,
            "source": "vllm.model_executor.models.registry _TEXT_GENERATION_MODELS + _MULTIMODAL_MODELS (keys)",
            "architectures": sorted(names)}


def _module_assignment(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    return None


def _string_constants(root: Path) -> dict[str, str]:
    """Module-level ``NAME = "string"`` assignments in ``root``'s ``config.py`` files (e.g. GEMMA2_ARCHITECTURE)."""
    constants = {}
    for path in sorted(root.glob("*/config.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(
                    node.value.value, str):
                constants.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return constants


def _dict_keys(path: Path, name: str, constants: dict[str, str]) -> list[str]:
    value = _module_assignment(ast.parse(path.read_text()), name)
    if not isinstance(value, ast.Dict):
        raise SystemExit(f"{path}: no dict literal {name} = {{...}}")
    keys = set()
    for key in value.keys:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
        elif isinstance(key, ast.Name) and key.id in constants:
            keys.add(constants[key.id])
        else:
            raise SystemExit(f"{path}: {name} has a key that is neither a string nor a known constant: "
                             f"{ast.unparse(key) if key is not None else '**'}")
    return sorted(keys)


def _registered_architectures(models_dir: Path) -> list[str]:
    """Every ``@register_auto_model("Arch")`` string in the PyTorch backend's ``modeling_*.py`` files."""
    names = set()
    for path in sorted(models_dir.glob("modeling_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for decorator in node.decorator_list:
                    if (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register_auto_model"
                            and decorator.args and isinstance(decorator.args[0], ast.Constant)):
                        names.add(decorator.args[0].value)
    return sorted(names)


def trtllm_entries(source: Path, ref: str) -> dict[str, dict]:
    package = source / "tensorrt_llm"
    version_file = package / "version.py"
    version = None
    if version_file.is_file():
        value = _module_assignment(ast.parse(version_file.read_text()), "__version__")
        version = value.value if isinstance(value, ast.Constant) else None
    arch_index = package / "_torch" / "models" / "_arch_index.py"
    if arch_index.is_file():
        llmapi = _dict_keys(arch_index, "MODEL_ARCH_TO_MODULE", {})
        llmapi_source = "tensorrt_llm/_torch/models/_arch_index.py MODEL_ARCH_TO_MODULE (keys)"
    else:
        llmapi = _registered_architectures(package / "_torch" / "models")
        llmapi_source = 'tensorrt_llm/_torch/models/modeling_*.py @register_auto_model("...")'
    engine = _dict_keys(package / "models" / "__init__.py", "MODEL_MAP", _string_constants(package / "models"))
    return {
        "trtllm-llmapi": {"version": version, "source": f"NVIDIA/TensorRT-LLM {ref}: {llmapi_source}",
                          "architectures": llmapi},
        "trtllm-engine": {"version": version,
                          "source": f"NVIDIA/TensorRT-LLM {ref}: tensorrt_llm/models/__init__.py MODEL_MAP (keys)",
                          "architectures": engine},
    }


def build_table(previous: dict, trtllm_source: Path | None, trtllm_ref: str | None) -> dict:
    engines = {"transformers": transformers_entry(), "vllm": vllm_entry()}
    if trtllm_source is not None:
        engines.update(trtllm_entries(trtllm_source, trtllm_ref or str(trtllm_source)))
    else:
        engines.update({name: previous["engines"][name] for name in TRTLLM_ENGINES if name in previous.get(
            "engines", {})})
    return {"generated_by": "scripts/engine_architectures.py (do not edit by hand)", "engines": engines}


def render(table: dict) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table differs from a fresh one")
    parser.add_argument("--trtllm-source", type=Path, help="a TensorRT-LLM source tree (or site-packages dir)")
    parser.add_argument("--trtllm-ref", help="what --trtllm-source is (tag or commit), recorded in the table")
    parser.add_argument("--output", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    text = render(build_table(previous, args.trtllm_source, args.trtllm_ref))
    if args.check:
        if not args.output.is_file() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python scripts/engine_architectures.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}: " + ", ".join(
        f"{name} {len(entry['architectures'])}" for name, entry in json.loads(text)["engines"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
