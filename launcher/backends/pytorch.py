"""In-framework backend: a Triton Python-backend model that generates with ``transformers``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from launcher import containers
from launcher.backends.base import CONVERTIBLE, export_hf, export_step, hf_export, tritonserver_args
from launcher.deployment import Deployment
from launcher.errors import Problem
from launcher.plan import Placement, Plan, ServerCommand, TritonModel
from launcher.spec import BackendSpec

SETUP = "run scripts/setup (it installs the serve extra)"


@dataclass
class PytorchBackendSpec(BackendSpec):
    name: str = "pytorch"
    device: str = "auto"  # auto (cuda when the hardware has GPUs) | cpu | cuda
    compile: bool = False  # static KV cache + torch.compile (CUDA graphs) for fast GPU decoding


class PytorchBackend:
    name = "pytorch"
    spec_class = PytorchBackendSpec
    container_suffix = "pyt-python-py3"
    engine_packages = ("torch", "transformers")
    checkpoint_formats = CONVERTIBLE
    architecture_tables = MappingProxyType({"": "transformers"})
    serving_modules = MappingProxyType({"torch": SETUP, "transformers": SETUP})

    def problems(self, dep: Deployment) -> list[Problem]:
        backend = dep.spec.backend
        problems = []
        if backend.tensor_parallel > 1 or backend.pipeline_parallel > 1:
            problems.append(Problem("backend.tensor_parallel", "the pytorch backend does not split a model "
                                    "across GPUs; it runs one model instance per GPU",
                                    "keep tensor_parallel=1 pipeline_parallel=1, or use backend=vllm or trtllm"))
        hw = dep.spec.hardware
        if hw.nodes > 1:
            problems.append(Problem("hardware", f"the pytorch backend serves from one tritonserver on one node; "
                                    f"hardware={hw.name} has {hw.nodes} nodes",
                                    "pick a one-node entry (e.g. hardware=h100x8) and deploy once per node, "
                                    "or use backend=vllm or trtllm"))
        if dep.spec.precision.weights not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(Problem("precision", f"the pytorch backend serves 16/32-bit weights, not "
                                    f"{dep.spec.precision.name}", "use precision=bf16, fp16, fp32 or auto"))
        return problems

    def plan(self, dep: Deployment) -> Plan:
        export = hf_export(dep)
        spec, hw = dep.spec, dep.spec.hardware
        device = spec.backend.device if spec.backend.device != "auto" else ("cuda" if hw.gpu else "cpu")
        gpus = list(range(hw.gpus_per_node)) if device == "cuda" else []
        model = TritonModel(
            template="pytorch/model",
            name=spec.model.served_name,
            context={"model_dir": str(export.directory), "dtype": export.dtype, "device": device, "gpus": gpus},
        )
        # Triton starts instance_count instances on each GPU of the instance group (one Python stub each)
        count = spec.backend.instance_count
        placement = [Placement(f"{spec.model.served_name} model instance {i + 1} of {count} on this GPU", 0, gpu)
                     for gpu in gpus for i in range(count)]
        steps = [export_step(dep, export, "convert to a Hugging Face safetensors directory")]
        return Plan(export, steps, [model], placement=placement)

    def export(self, dep: Deployment, plan: Plan) -> bool:
        return export_hf(dep, plan.export)

    def server_ranks(self, dep: Deployment, plan: Plan, command: ServerCommand) -> list[list[str]]:
        return [tritonserver_args(dep, command)]

    def container_tag(self, dep: Deployment) -> str:
        return containers.default(self.name).tag

    def backend_files(self, dep: Deployment) -> dict[str, Path]:
        return {}  # the model brings its own model.py; Triton's python backend runs it


BACKEND = PytorchBackend()
