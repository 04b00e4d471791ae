"""The container table and what is rendered for each TensorRT-LLM version: defaults, refusals of runtime x
container pairs, model.yaml against the version's LlmArgs schema, planned commands' flags against the
version's argument parsers (committed lists with their sources), lock.json, and every rank's command on
every target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from launcher import containers
from launcher.backends.trtllm import versions
from launcher.errors import LauncherError

LLAMA = ("model=llama3-8b", "backend=trtllm", "precision=bf16")
RENDERED_FOR = [(runtime, row.tag) for runtime, wanted in versions.RENDERS.items()
                for row in containers.containers() if row.trtllm in wanted and runtime in row.runtimes]


def refusal(run_deploy, *overrides: str) -> str:
    with pytest.raises(LauncherError) as caught:
        run_deploy(*overrides)
    assert len(caught.value.problems) == 1
    return str(caught.value.problems[0])


def test_defaults_follow_the_rule() -> None:
    """engine: the container of TensorRT-LLM 0.19.0; llmapi: the newest one llm-launch renders for;
    vllm: the newest with a known vLLM; pytorch: the newest release."""
    rows = containers.containers()
    assert containers.default("engine").trtllm == "0.19.0"
    assert containers.default("llmapi") == [r for r in rows if r.trtllm in versions.RENDERS["llmapi"]][-1]
    assert containers.default("vllm") == [r for r in rows if r.vllm][-1]
    assert containers.default("pytorch") == rows[-1]
    assert containers.find("25.05-trtllm-python-py3").triton == "2.58.0"
    assert {"engine", "llmapi"} == set(containers.find("25.05").runtimes)
    assert containers.find("25.04").runtimes == ("engine",)  # the llmapi model first shipped with 0.19.0


@pytest.mark.parametrize(("backend", "suffix", "tag"), [
    (("backend=trtllm",), "trtllm-python-py3", containers.default("llmapi").tag),
    (("backend=trtllm", "backend.runtime=engine"), "trtllm-python-py3", "25.05"),
    (("backend=vllm",), "vllm-python-py3", containers.default("vllm").tag),
    (("backend=pytorch",), "pyt-python-py3", containers.default("pytorch").tag)])
@pytest.mark.parametrize("target", ["docker", "k8s"])
def test_the_image_is_the_default_row(run_deploy, tmp_path: Path, backend: tuple[str, ...], suffix: str, tag: str,
                                      target: str) -> None:
    run_deploy("model=llama3-8b", "precision=bf16", "hardware=h100x1", *backend, f"target={target}", "action=render")
    text = (tmp_path / "out" / ("launch.sh" if target == "docker" else "k8s.yaml")).read_text()
    assert f"nvcr.io/nvidia/tritonserver:{tag}-{suffix}" in text


@pytest.mark.parametrize(("overrides", "key", "works"), [
    (("backend.runtime=engine", "target.tag=26.07"), "target.tag", "25.05"),  # ships 1.2.1: not rendered for
    (("backend.runtime=engine", "target.tag=24.12"), "target.tag", "25.05"),
    (("target.tag=25.01",), "target.tag", containers.default("llmapi").tag),  # 0.17: no llmapi model
    (("target.tag=26.10",), "target.tag", containers.default("llmapi").tag),  # TensorRT-LLM version unknown
    (("target.tag=latest",), "target.tag", containers.default("llmapi").tag),
    (("target.tag=26.07", "backend.trtllm_version=1.1.0"), "backend.trtllm_version", "1.2.1"),
    (("backend.runtime=engine", "backend.trtllm_version=0.17.0"), "backend.trtllm_version", "25.05"),
], ids=["engine-26.07", "engine-24.12", "llmapi-25.01", "llmapi-26.10", "latest", "version-mismatch",
        "engine-version"])
def test_incompatible_pairs_are_refused_in_one_line(run_deploy, overrides: tuple[str, ...], key: str,
                                                    works: str) -> None:
    line = refusal(run_deploy, *LLAMA, "hardware=h100x1", "target=docker", *overrides, "action=plan")
    assert line.startswith(f"{key}: ") and works in line.split("(", 1)[-1] and "\n" not in line


def test_slurm_container_image_tag_is_checked(run_deploy) -> None:
    line = refusal(run_deploy, *LLAMA, "hardware=h100x1", "target=slurm", "backend.runtime=engine",
                   "target.container_image='nvcr.io#nvidia/tritonserver:26.07-trtllm-python-py3'", "action=plan")
    assert line.startswith("target.container_image: '26.07' ships TensorRT-LLM 1.2.1") and "25.05" in line


def test_trtllm_version_picks_the_container(run_deploy, tmp_path: Path) -> None:
    run_deploy(*LLAMA, "hardware=h100x1", "target=docker", "backend.trtllm_version=1.2.0", "action=render")
    assert "tritonserver:26.03-trtllm-python-py3" in (tmp_path / "out" / "launch.sh").read_text()
    lock = json.loads((tmp_path / "out" / "lock.json").read_text())
    assert lock["container"]["tag"] == "26.03" and lock["container"]["trtllm_rendered_for"] == "1.2.0"
    assert "compatibility.md" in lock["container"]["source"]


# ------------------------------------------------------------------------------ schema and flag checks
def check_value(value: object, annotation: str, classes: dict[str, dict[str, str]], where: str) -> None:
    """``value`` fits the upstream annotation (the checks a pydantic model with extra=forbid makes first)."""
    optional = annotation.startswith("Optional[")
    inner = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        assert optional, f"{where}: None for {annotation}"
        return
    if inner in classes:
        assert isinstance(value, dict), where
        for key, item in value.items():
            assert key in classes[inner], f"{where}.{key}: not a field of {inner}"
            check_value(item, classes[inner][key], classes, f"{where}.{key}")
    elif inner.startswith("Literal["):
        assert value in re.findall(r"'([^']*)'", inner), f"{where}: {value!r} not in {inner}"
    elif inner in ("bool",):
        assert isinstance(value, bool), where
    elif inner in ("int", "PositiveInt", "NonNegativeInt"):
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif inner in ("float", "NonNegativeFloat"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif inner == "str":
        assert isinstance(value, str), where


def check_model_yaml(model_yaml: dict, version: str) -> None:
    schema = versions.llm_args_schema(version)
    classes = schema["classes"]
    args = {k: v for k, v in model_yaml.items() if k != "triton_config"}  # our model.py reads it, never LLM()
    for key, value in args.items():
        assert key in classes["TorchLlmArgs"], f"{key}: not a field of TorchLlmArgs {version}"
        if key == "speculative_config":
            assert value["decoding_type"] in schema["decoding_types"]
            for field in set(value) - {"decoding_type"}:
                assert field in classes["DecodingBaseConfig"], field
            continue
        check_value(value, classes["TorchLlmArgs"][key], classes, key)


def flags(command: tuple[str, ...]) -> dict[str, str]:
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in command if arg.startswith("--"))


@pytest.mark.parametrize(("runtime", "tag"), RENDERED_FOR)
@pytest.mark.parametrize("precision", ["bf16", "fp8", "int4_awq", "int8_sq"])
def test_rendered_files_and_commands_fit_the_version(run_deploy, tmp_path: Path, runtime: str, tag: str,
                                                     precision: str) -> None:
    if runtime == "engine" and precision == "int4_awq":
        precision = "int8_sq"  # both calibrate through quantize.py
    outcome = run_deploy("model=llama3-8b", "backend=trtllm", f"backend.runtime={runtime}", f"precision={precision}",
                         "hardware=h100x2", "backend.tensor_parallel=2", "target=docker", f"target.tag={tag}",
                         "backend.speculative_decoding=NGram", "action=render")
    version = containers.find(tag).trtllm
    out = tmp_path / "out"
    engine_facts = versions.facts(versions.ENGINE_FACTS)
    for step in outcome.steps:
        if step.command[:1] == ("trtllm-build",):
            known = set(engine_facts["trtllm_build"]["flags"]) | set(engine_facts["trtllm_build"]["plugin_flags"])
            assert set(flags(step.command)) <= known
            assert flags(step.command)["--kv_cache_type"] in engine_facts["trtllm_build"]["choices"]["--kv_cache_type"]
        elif step.kind == "quantize" and runtime == "engine":
            quantize = engine_facts["quantize"]
            assert step.command[1] == quantize["script"]
            given = flags(step.command)
            assert set(given) <= set(quantize["flags"])
            for flag, choices in quantize["choices"].items():
                assert flag not in given or given[flag] in choices, (flag, given.get(flag))
        elif step.kind == "quantize":
            release = versions.modelopt()
            given = flags(step.command)
            assert step.command[1] == release["script"] and set(given) <= set(release["flags"])
            assert given["--qformat"] in release["qformats"]
            assert given["--kv_cache_qformat"] in release["kv_cache_qformats"]
    if runtime == "llmapi":
        model_yaml = yaml.safe_load((out / "model_repository/llm/1/model.yaml").read_text())
        check_model_yaml(model_yaml, version)
        assert model_yaml["kv_cache_config"]["enable_block_reuse"] is True  # upstream's default: prefix reuse on
    else:
        params = json.loads((out / "lock.json").read_text())["container"]
        assert params["trtllm"] == "0.19.0"


def test_prefix_reuse_can_be_turned_off(run_deploy, tmp_path: Path) -> None:
    run_deploy(*LLAMA, "hardware=h100x1", "target=docker", "backend.enable_kv_cache_reuse=false",
               "backend.cuda_graphs=false", "backend.enable_chunked_context=true", "action=render")
    model_yaml = yaml.safe_load((tmp_path / "out/model_repository/llm/1/model.yaml").read_text())
    assert model_yaml["kv_cache_config"]["enable_block_reuse"] is False
    assert model_yaml["cuda_graph_config"] is None and model_yaml["enable_chunked_prefill"] is True
    check_model_yaml(model_yaml, "1.2.1")


def test_an_unknown_decoding_type_is_refused(run_deploy) -> None:
    line = refusal(run_deploy, *LLAMA, "hardware=h100x1", "backend.speculative_decoding=Magic", "action=plan")
    assert line.startswith("backend.speculative_decoding: 'Magic' is not a decoding type of TensorRT-LLM 1.2.1")


def test_schema_script_reads_pydantic_fields(tmp_path: Path) -> None:
    """scripts/llm_args_schema.py on a small llm_args.py of our own (the layout of upstream's classes)."""
    import importlib.util

    source = tmp_path / "llm_args.py"
    source.write_text("class KvCacheConfig(StrictBaseModel):\n    enable_block_reuse: bool = Field(default=True)\n"
                      "    _private: int = 0\n"
                      "class BaseLlmArgs(StrictBaseModel):\n    model: Union[str, Path] = Field()\n"
                      "    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)\n"
                      "class TorchLlmArgs(BaseLlmArgs):\n    backend: Literal['pytorch'] = 'pytorch'\n"
                      "class NGramDecodingConfig(DecodingBaseConfig):\n    decoding_type: Literal['NGram'] = 'NGram'\n")
    spec = importlib.util.spec_from_file_location("llm_args_schema", Path(__file__).parents[3] / "scripts" /
                                                  "llm_args_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = module.schema(source.read_text())
    assert schema["classes"]["TorchLlmArgs"] == {"model": "Union[str, Path]", "kv_cache_config": "KvCacheConfig",
                                                 "backend": "Literal['pytorch']"}
    assert schema["classes"]["KvCacheConfig"] == {"enable_block_reuse": "bool"}
    assert schema["decoding_types"] == ["NGram"]


@pytest.mark.parametrize("runtime", ["llmapi", "engine"])
@pytest.mark.parametrize("target", ["local", "docker", "k8s", "slurm"])
def test_each_rank_command_on_every_target(runtime: str, target: str) -> None:
    """Two ranks: rank 0 loads every model, rank 1 only the rank model; each has its own shm prefix, the
    wrapper where the runtime needs it, and (this machine's server) the backend directory — rank 0 too."""
    from launcher.backends import get_backend
    from launcher.deployment import resolve
    from launcher.pipeline import typed_spec
    from launcher.targets import get_target
    from tests.conftest import compose_spec

    spec = typed_spec(compose_spec([*LLAMA, "hardware=h100x2", "backend.tensor_parallel=2",
                                    f"backend.runtime={runtime}", f"target={target}", "action=plan"]))
    dep, backend = resolve(spec), get_backend("trtllm")
    launch = get_target(target).launch(dep, backend.plan(dep), backend)
    assert len(launch.ranks) == 2
    rank_model = "llm" if runtime == "llmapi" else "tensorrt_llm"
    host = target in ("local", "slurm")  # this machine's tritonserver (slurm without an image)
    for rank, argv in enumerate(launch.ranks):
        server = argv[1:] if runtime == "llmapi" else argv
        assert (argv[0] == "trtllm-llmapi-launch") == (runtime == "llmapi")
        assert Path(server[0]).name == "tritonserver"
        assert f"--backend-config=python,shm-region-prefix-name=prefix{rank}_" in argv
        assert (f"--load-model={rank_model}" in argv) == (rank > 0)
    with_dir = {any(a.startswith("--backend-directory=") for a in argv) for argv in launch.ranks}
    assert len(with_dir) == 1  # rank 0 gets the backend directory exactly when the others do
    if host:
        from launcher.triton import find_triton

        assert with_dir == {find_triton(None).root is not None}  # the wheel's server needs it
    else:
        assert with_dir == {False}  # NVIDIA's container brings its backends
