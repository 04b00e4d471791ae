"""Kubernetes target: Deployment + Service manifests with GPU resources and health probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.backends.base import Backend, Plan, Step
from launcher.deployment import Deployment
from launcher.errors import user_error
from launcher.targets.docker import ContainerTargetSpec, bind_all_interfaces, image

REPOSITORY_MOUNT = "/triton"


@dataclass
class K8sTargetSpec(ContainerTargetSpec):
    name: str = "k8s"
    namespace: str = "default"
    replicas: int = 1
    repository_pvc: str = "llm-launch-models"  # PVC holding the rendered repository and the export
    service_type: str = "ClusterIP"


def manifests(dep: Deployment, backend: Backend) -> list[dict[str, Any]]:
    spec, hw, server = dep.spec, dep.spec.hardware, dep.spec.server
    name = spec.name.lower().replace("_", "-").replace(".", "-")[:63]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "llm-launch"}
    resources: dict[str, Any] = {"requests": {"cpu": "4", "memory": f"{int(max(hw.memory_gb, 16))}Gi"}}
    if hw.gpu:
        resources["limits"] = {"nvidia.com/gpu": hw.gpus_per_node}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 10}
    args = backend.server_args(dep, "tritonserver", f"{REPOSITORY_MOUNT}/model_repository")
    container = {
        "name": "triton",
        "image": image(dep),
        "command": args[:1],
        "args": bind_all_interfaces(args[1:], server.host),
        "ports": [{"name": "http", "containerPort": server.http_port},
                  {"name": "grpc", "containerPort": server.grpc_port},
                  {"name": "metrics", "containerPort": server.metrics_port}],
        "resources": resources,
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}},
        "startupProbe": {**probe, "failureThreshold": 120},
        "volumeMounts": [{"name": "models", "mountPath": REPOSITORY_MOUNT, "readOnly": True}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.target.namespace, "labels": labels},
        "spec": {
            "replicas": spec.target.replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [container],
                "volumes": [{"name": "models",
                             "persistentVolumeClaim": {"claimName": spec.target.repository_pvc}}],
            }},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": spec.target.namespace, "labels": labels},
        "spec": {"type": spec.target.service_type, "selector": labels,
                 "ports": [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}
                           for p in container["ports"]]},
    }
    return [deployment, service]


class K8sTarget:
    name = "k8s"
    spec_class = K8sTargetSpec

    def launch_files(self, dep: Deployment, plan: Plan, backend: Backend) -> dict[str, str]:
        import yaml

        return {"k8s.yaml": yaml.safe_dump_all(manifests(dep, backend), sort_keys=False)}

    def launch_step(self, dep: Deployment, plan: Plan, backend: Backend) -> Step:
        return Step("launch", "apply the manifests",
                    ("kubectl", "apply", "-f", str(dep.paths.output_dir.resolve() / "k8s.yaml")),
                    where="cluster")

    def run(self, dep: Deployment, plan: Plan, backend: Backend) -> None:
        raise user_error("target", "action=serve with target=k8s is not available here",
                         f"kubectl apply -f {dep.paths.output_dir}/k8s.yaml")


TARGET = K8sTarget()
