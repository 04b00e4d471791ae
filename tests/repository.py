"""Reading what ``render`` wrote: Triton configs through Triton's own schema, launch command lines."""

from __future__ import annotations

import shlex
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


def model_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def mpirun_segments(argv: list[str]) -> list[list[str]]:
    """An ``mpirun`` MPMD argv split into its ``:``-separated rank segments (without ``mpirun``'s options)."""
    start = argv.index("mpirun")
    assert argv[start:start + 2] == ["mpirun", "--allow-run-as-root"], argv[start:start + 3]
    parts: list[list[str]] = [[]]
    for word in argv[start + 2:]:
        if word == ":":
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def docker_argv(out: Path) -> list[str]:
    """The ``docker run`` argv of a rendered ``launch.sh`` (its line, run in the background beside the OpenAI
    front end, or exec'd without it)."""
    line = next(line for line in (out / "launch.sh").read_text().splitlines()
                if line.startswith(("docker run ", "exec docker run ")))
    words = shlex.split(line.removesuffix(" &"))
    return words[words.index("docker"):]


def docker_server_command(out: Path) -> list[str]:
    """The container command of the rendered ``launch.sh`` (what follows the image name)."""
    words = docker_argv(out)
    image = next(i for i, w in enumerate(words) if w.startswith("nvcr.io/"))
    return words[image + 1:]


def docker_gpus(out: Path) -> list[int]:
    """The GPU ids ``launch.sh`` gives the container (``--gpus '"device=0,1"'``)."""
    words = docker_argv(out)
    value = words[words.index("--gpus") + 1]
    return [int(i) for i in value.strip('"').removeprefix("device=").split(",")]
