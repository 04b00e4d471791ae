"""Kubernetes target: Deployment + Service manifests with GPU resources and health probes, checked
against the Kubernetes schema (``kubernetes-validate``, offline) before they are written.

The repository and the export live on a PersistentVolumeClaim (``target.repository_pvc``) at the same
paths as on the machine that rendered them (relative to the volume's root), so every path the
repository holds stays valid inside the pod. The OpenAI front end (``server.openai``) is the pod's second
container (``target.openai_image``), in front of Triton's gRPC port on the pod's loopback, with its own port
on the Service and probes on ``/health/ready``; its API key comes from a Secret, never from the manifest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from launcher.backends.base import Backend
from launcher.deployment import Deployment
from launcher.errors import Problem, user_error
from launcher.plan import Launch, LaunchFile, Plan, Step
from launcher.sizing import GIB, memory_estimate
from launcher.spec import ContainerTargetSpec
from launcher.targets.common import (
    ALL_INTERFACES,
    chat_template_files,
    container_command,
    container_image,
    fixed_ports,
    frontend_step,
    mpirun,
)

MANIFESTS = "k8s.yaml"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # a Secret's name
FRONTEND_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}}  # the tokenizer and the HTTP server
HOST_OVERHEAD_GIB = 4  # Triton, the Python-backend stubs and the tokenizer, beside the weights


class ServiceType(Enum):
    ClusterIP = "ClusterIP"
    NodePort = "NodePort"
    LoadBalancer = "LoadBalancer"


@dataclass
class K8sTargetSpec(ContainerTargetSpec):
    name: str = "k8s"
    namespace: str = "default"
    replicas: int = 1
    repository_pvc: str = "llm-launch-models"  # PVC holding the rendered repository and the export
    service_type: ServiceType = ServiceType.ClusterIP
    shm_size: str = "2Gi"  # /dev/shm (a memory-backed emptyDir): the Python backend passes tensors through it
    pod: dict[str, Any] = field(default_factory=dict)  # added to the pod spec: nodeSelector, tolerations, ...
    kubernetes_version: str = "1.30"  # the schema the manifests are validated against
    # the OpenAI front end's container: an image with llm-launch[serve] installed (python3 -m launcher.frontend)
    openai_image: str = "llm-launch:0.1.0"
    openai_api_key_secret: str | None = None  # the Secret holding server.openai_api_key_env's key (None: <name>-openai)


def resource_name(dep: Deployment) -> str:
    """``name`` as a DNS-1123 label (what Kubernetes accepts as a Deployment and Service name)."""
    return re.sub(r"[^a-z0-9-]+", "-", dep.spec.name.lower()).strip("-")[:63].rstrip("-")


def problems(dep: Deployment) -> list[Problem]:
    spec, target = dep.spec, dep.spec.target
    found = fixed_ports(dep)
    if spec.hardware.nodes > 1:
        found.append(Problem("hardware", f"target=k8s writes one Deployment whose pod runs on one node; "
                             f"hardware={spec.hardware.name} spans {spec.hardware.nodes} nodes",
                             "use target=slurm for multi-node serving, or a one-node hardware entry"))
    if not DNS_LABEL.fullmatch(target.namespace) or len(target.namespace) > 63:
        found.append(Problem("target.namespace", f"'{target.namespace}' is not a Kubernetes namespace name",
                             "use lower-case letters, digits and '-' (at most 63)"))
    if not resource_name(dep):
        found.append(Problem("name", f"'{spec.name}' leaves no letter or digit for a Kubernetes name",
                             "set name=<letters, digits and '-'>"))
    secret = target.openai_api_key_secret
    if secret is not None and not (DNS_SUBDOMAIN.fullmatch(secret) and len(secret) <= 253):
        found.append(Problem("target.openai_api_key_secret", f"'{secret}' is not a Kubernetes Secret name",
                             "use lower-case letters, digits, '-' and '.' (at most 253)"))
    return found


def api_key_secret(dep: Deployment) -> str:
    """The Secret that holds the front end's API key (under the variable's name)."""
    return dep.spec.target.openai_api_key_secret or f"{resource_name(dep)}-openai"


def resources(dep: Deployment) -> dict[str, Any]:
    """Requests from the spec: the node's GPUs, 2 CPUs per GPU (or per model instance on CPU), and host
    memory for the weights this pod loads (KV cache too on CPU) plus the server's own overhead."""
    hw = dep.spec.hardware
    estimate = memory_estimate(dep) if dep.arch is not None else {"weights": 0.0, "total": 0.0}
    held = estimate["weights"] * hw.gpus_per_node if hw.gpu else estimate["total"]
    requests: dict[str, Any] = {"cpu": str(2 * max(hw.gpus_per_node, dep.spec.backend.instance_count, 1)),
                                "memory": f"{math.ceil(held / GIB) + HOST_OVERHEAD_GIB}Gi"}
    if not hw.gpu:
        return {"requests": requests}
    gpus = {"nvidia.com/gpu": hw.gpus_per_node}
    return {"requests": {**requests, **gpus}, "limits": gpus}


def model_mount(path: Path) -> dict[str, Any]:
    """``path`` of the PVC, read-only at its own path in a container."""
    where = str(path.expanduser().resolve())
    return {"name": "models", "mountPath": where, "subPath": where.lstrip("/"), "readOnly": True}


def volumes(dep: Deployment, plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes and the container's mounts: the PVC at the repository's and the export's own paths."""
    target = dep.spec.target
    mounts = [model_mount(dep.paths.repository), model_mount(plan.export.directory), {"name": "shm",
                                                                                    "mountPath": "/dev/shm"}]
    pod_volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": target.repository_pvc,
                                                                "readOnly": True}},
                   {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": target.shm_size}}]
    return pod_volumes, mounts


def probes(port: str, path: str, live: str, start_timeout_s: float) -> dict[str, Any]:
    """Startup (for as long as ``server.start_timeout_s``), readiness and liveness probes of one container."""
    probe = {"periodSeconds": 10, "timeoutSeconds": 5}
    return {"startupProbe": {**probe, "httpGet": {"path": path, "port": port},
                             "failureThreshold": math.ceil(start_timeout_s / probe["periodSeconds"])},
            "readinessProbe": {**probe, "httpGet": {"path": path, "port": port}},
            "livenessProbe": {**probe, "httpGet": {"path": live, "port": port}, "failureThreshold": 3}}


def frontend_container(dep: Deployment, plan: Plan, command: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAI front end beside Triton: the export's tokenizer (and the chat template) mounted read-only, the
    API key from its Secret by the variable's name."""
    server = dep.spec.server
    mounts = [model_mount(plan.export.directory)]
    if dep.spec.model.chat_template_file:
        mounts.append(model_mount(dep.paths.chat_template))
    container: dict[str, Any] = {"name": "openai", "image": dep.spec.target.openai_image,
                                 "command": list(command[:3]), "args": list(command[3:]),
                                 "ports": [{"name": "openai", "containerPort": server.openai_port}]}
    if server.openai_api_key_env:
        container["env"] = [{"name": server.openai_api_key_env, "valueFrom": {"secretKeyRef": {
            "name": api_key_secret(dep), "key": server.openai_api_key_env}}}]
    return {**container, "resources": FRONTEND_RESOURCES,
            **probes("openai", "/health/ready", "/health/ready", server.start_timeout_s), "volumeMounts": mounts}


def manifests(dep: Deployment, plan: Plan, image: str, command: list[str],
              frontend: tuple[str, ...] | None) -> list[dict[str, Any]]:
    target, server = dep.spec.target, dep.spec.server
    name = resource_name(dep)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "llm-launch"}
    pod_volumes, mounts = volumes(dep, plan)
    container = {
        "name": "triton",
        "image": image,
        "command": command[:1],
        "args": command[1:],
        "ports": [{"name": "http", "containerPort": server.http_port},
                  {"name": "grpc", "containerPort": server.grpc_port},
                  {"name": "metrics", "containerPort": server.metrics_port}],
        "resources": resources(dep),
        **probes("http", "/v2/health/ready", "/v2/health/live", server.start_timeout_s),
        "volumeMounts": mounts,
    }
    containers = [container, *([frontend_container(dep, plan, frontend)] if frontend else [])]
    metadata = {"name": name, "namespace": target.namespace, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {
            "replicas": target.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": containers, "volumes": pod_volumes, **target.pod}},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"type": target.service_type.value, "selector": labels,
                 "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                           for c in containers for p in c["ports"]]},
    }
    return [deployment, service]


def validate(dep: Deployment, manifest: dict[str, Any]) -> None:
    """Check one manifest against the Kubernetes schema; a failure names the spec key it came from."""
    try:
        import kubernetes_validate
    except ImportError:
        raise user_error("target", "kubernetes-validate is not installed; target=k8s checks its manifests with it",
                         "pip install 'llm-launch[cluster]'") from None
    version = dep.spec.target.kubernetes_version
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = [str(p) for p in err.absolute_path]
        where = ".".join(path)
        key = "target"
        if path[:3] == ["spec", "template", "spec"] and len(path) > 3 and path[3] in dep.spec.target.pod:
            key, where = "target.pod." + ".".join(path[3:]), ".".join(path[3:])
        raise user_error(key, f"{manifest['kind']} field {where}: {err.message}",
                         f"give {key} what the Kubernetes {version} schema expects") from None
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.utils.VersionNotSupportedError) as err:
        raise user_error("target.kubernetes_version", err.message,
                         f"use a version kubernetes-validate knows (up to {kubernetes_validate.latest_version()})"
                         ) from None


def manifests_yaml(dep: Deployment, plan: Plan, image: str, command: list[str],
                   frontend: tuple[str, ...] | None) -> str:
    """The validated manifests as YAML documents (shared label maps written out, not as anchors)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    documents = manifests(dep, plan, image, command, frontend)
    for manifest in documents:
        validate(dep, manifest)
    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False)


class K8sTarget:
    name = "k8s"
    spec_class = K8sTargetSpec

    def problems(self, dep: Deployment, backend: Backend) -> list[Problem]:
        return problems(dep)

    def launch(self, dep: Deployment, plan: Plan, backend: Backend) -> Launch:
        image = container_image(dep, backend)
        ranks = backend.server_ranks(dep, plan, container_command(dep, str(dep.paths.repository.resolve())))
        command = mpirun(ranks)
        server = dep.spec.server
        frontend = frontend_step(dep, plan, triton=f"127.0.0.1:{server.grpc_port}", host=ALL_INTERFACES,
                                 port=str(server.openai_port), python="python3", where="cluster",
                                 beside=f"in the pod's second container ({dep.spec.target.openai_image})")
        manifest = LaunchFile(MANIFESTS, text=manifests_yaml(dep, plan, image, command,
                                                             frontend.command if frontend else None))
        extra = " and chat_template.jinja" if dep.spec.model.chat_template_file else ""
        secret = (f"; the front end's API key: kubectl create secret generic {api_key_secret(dep)} "
                  f"--from-literal={server.openai_api_key_env}=<key>" if frontend and server.openai_api_key_env
                  else "")
        step = Step("launch", f"copy the repository{extra} and the export onto PVC {dep.spec.target.repository_pvc} "
                    f"at their own paths, then apply the manifests{secret}",
                    ("kubectl", "apply", "-f", str(dep.paths.output_dir.resolve() / MANIFESTS)), where="cluster")
        return Launch(step, (manifest, *chat_template_files(dep)), tuple(map(tuple, ranks)), server,
                      frontend=frontend)

    def run(self, dep: Deployment, plan: Plan, backend: Backend, launch: Launch) -> None:
        raise user_error("target", "action=serve with target=k8s is not available here",
                         f"kubectl apply -f {dep.paths.output_dir}/{MANIFESTS}")


TARGET = K8sTarget()
