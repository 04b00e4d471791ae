"""Kubernetes manifests: Deployment + Service for an 8-GPU node, schema-valid, and clear errors."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pytest import param

from launcher import containers
from launcher.errors import LauncherError
from tests.conftest import run_cli

H100X8 = ("model=llama3-70b", "hardware=h100x8", "backend.tensor_parallel=8", "precision=bf16", "target=k8s")


def manifests(out: Path) -> dict[str, dict]:
    documents = list(yaml.safe_load_all((out / "k8s.yaml").read_text()))
    return {document["kind"]: document for document in documents}


@pytest.mark.parametrize("backend", ["trtllm", "vllm"])
def test_h100x8_manifests_are_valid_and_derived_from_the_spec(run_deploy, backend: str) -> None:
    out = Path(run_deploy(*H100X8, f"backend={backend}", "target.namespace=serving", "target.replicas=2",
                          "server.http_port=9000", "server.openai_port=9100", "action=render").output_dir)
    found = manifests(out)
    assert sorted(found) == ["Deployment", "Service"]
    for document in found.values():
        kubernetes_validate.validate(document, "1.30", strict=True)  # independently of the launcher's own check
        assert document["metadata"]["namespace"] == "serving"
    deployment, service = found["Deployment"], found["Service"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container, frontend = pod["containers"]
    assert frontend["name"] == "openai" and frontend["image"] == "llm-launch:0.1.0"  # target.openai_image
    assert frontend["args"][:4] == ["--triton=127.0.0.1:8001", "--model=llm", "--host=0.0.0.0", "--port=9100"]
    tag = containers.default("llmapi" if backend == "trtllm" else backend).tag  # the table's row for the backend
    assert container["image"] == f"nvcr.io/nvidia/tritonserver:{tag}-{backend}-python-py3"
    resources = container["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 8}
    assert resources["requests"]["nvidia.com/gpu"] == 8 and resources["requests"]["cpu"] == "16"
    # 70.6B bf16 parameters = 131.5 GiB of weights held by the pod, + 4 GiB for the server
    assert resources["requests"]["memory"] == "136Gi"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    assert {"name": "http", "containerPort": 9000} in container["ports"]
    assert "--http-port=9000" in container["args"] and "--http-address=0.0.0.0" in container["args"]
    repository = str(out / "model_repository")
    assert f"--model-repository={repository}" in container["args"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[repository] == {"name": "models", "mountPath": repository, "subPath": repository.lstrip("/"),
                                  "readOnly": True}
    assert mounts["/dev/shm"]["name"] == "shm"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "llm-launch-models", "readOnly": True}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {"name": "http", "port": 9000, "targetPort": "http"} in service["spec"]["ports"]
    assert {"name": "openai", "port": 9100, "targetPort": "openai"} in service["spec"]["ports"]
    assert "&id" not in (out / "k8s.yaml").read_text()  # no YAML anchors: plain documents kubectl diffs well


def test_the_frontend_container_fronts_triton_with_its_key_from_a_secret(run_deploy, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's second container: the front end in front of Triton's gRPC port on the pod's loopback, the export's
    tokenizer and the render's chat template mounted, the API key from a Secret by the variable's name (the key
    in this environment never reaches the manifest), probes on /health/ready, its port on the Service."""
    monkeypatch.setenv("LLM_LAUNCH_K8S_KEY", "k8s-secret-value")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    outcome = run_deploy(*H100X8, "backend=vllm", "server.openai_api_key_env=LLM_LAUNCH_K8S_KEY",
                         "server.openai_aliases=[llama-70b,meta/llama3:70b]",
                         "target.openai_image=registry.local/llm:1", "target.openai_api_key_secret=team-keys",
                         f"model.chat_template_file={template}",
                         "server.openai_cors_origins=[https://app.example.com]", "action=render")
    out = Path(outcome.output_dir)
    assert "k8s-secret-value" not in (out / "k8s.yaml").read_text()
    found = manifests(out)
    triton, frontend = found["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert frontend["image"] == "registry.local/llm:1"
    assert frontend["command"] == ["python3", "-m", "launcher.frontend"]
    export = next(m["mountPath"] for m in triton["volumeMounts"] if m["mountPath"] != str(out / "model_repository")
                  and m["name"] == "models")
    copy = str(out / "chat_template.jinja")
    assert frontend["args"] == [
        "--triton=127.0.0.1:8001", "--model=llm", "--host=0.0.0.0", "--port=9000", "--alias=llama-70b",
        "--alias=meta/llama3:70b", f"--tokenizer={export}", f"--chat-template={copy}", "--max-tokens=1024",
        "--max-model-len=5120", "--api-key-env=LLM_LAUNCH_K8S_KEY", "--max-body-bytes=1048576",
        "--request-timeout-s=600", "--cors-origin=https://app.example.com"]
    assert (out / "chat_template.jinja").read_text() == template.read_text()  # the render's own copy
    assert frontend["env"] == [{"name": "LLM_LAUNCH_K8S_KEY", "valueFrom": {"secretKeyRef": {
        "name": "team-keys", "key": "LLM_LAUNCH_K8S_KEY"}}}]
    assert [m["mountPath"] for m in frontend["volumeMounts"]] == [export, copy]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert frontend[probe]["httpGet"] == {"path": "/health/ready", "port": "openai"}
    assert frontend["ports"] == [{"name": "openai", "containerPort": 9000}]
    launch = [step for step in outcome.steps if step.kind == "launch"]
    assert "kubectl create secret generic team-keys --from-literal=LLM_LAUNCH_K8S_KEY=<key>" in launch[0].description
    assert "chat_template.jinja" in launch[0].description
    assert launch[1].command[:3] == ("python3", "-m", "launcher.frontend")


def test_without_the_frontend_the_pod_runs_triton_alone(run_deploy) -> None:
    out = Path(run_deploy(*H100X8, "backend=vllm", "server.openai=false", "server.openai_port=0",
                          "action=render").output_dir)
    found = manifests(out)
    assert [c["name"] for c in found["Deployment"]["spec"]["template"]["spec"]["containers"]] == ["triton"]
    assert [p["name"] for p in found["Service"]["spec"]["ports"]] == ["http", "grpc", "metrics"]


def test_pod_settings_reach_the_pod_spec(run_deploy) -> None:
    out = Path(run_deploy(*H100X8, "backend=vllm", "+target.pod.nodeSelector.gpu=h100",
                          "+target.pod.priorityClassName=serving", "action=render").output_dir)
    pod = manifests(out)["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "serving"


@pytest.mark.parametrize("override, expected", [
    param("+target.pod.nodeSelector=gpu", r"^target.pod.nodeSelector: Deployment field nodeSelector: 'gpu' is not "
          r"of type 'object'", id="schema"),
    param("+target.pod.tolerations=[{key:gpu,effect:[1]}]",
          r"^target.pod.tolerations.0.effect: .*is not of type 'string'",
          id="schema-nested"),
    param("target.namespace=Team_A", r"^target.namespace: 'Team_A' is not a Kubernetes namespace name", id="namespace"),
    param("hardware=h100x8n2", r"^hardware: target=k8s writes one Deployment .* spans 2 nodes", id="multi-node"),
    param("target.kubernetes_version=1.99", r"^target.kubernetes_version: kubernetes-validate does not support",
          id="version"),
    param("server.grpc_port=0", r"^server.grpc_port: 0 \(pick a free port\)", id="port-zero"),
    param("server.openai_port=0", r"^server.openai_port: 0 \(pick a free port\)", id="openai-port-zero"),
    param("target.openai_api_key_secret=Team_Keys", r"^target.openai_api_key_secret: 'Team_Keys' is not a "
          r"Kubernetes Secret name", id="secret-name"),
])
def test_bad_k8s_input_is_one_error_naming_the_key(run_deploy, override: str, expected: str) -> None:
    with pytest.raises(LauncherError, match=expected) as raised:
        run_deploy(*H100X8, "backend=vllm", override, "action=render")
    assert len(raised.value.problems) == 1


def test_malformed_field_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    result = run_cli(*H100X8, "backend=vllm", "+target.pod.nodeSelector=gpu", f"output_dir={tmp_path / 'out'}",
                     "action=render", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error target.pod.nodeSelector:")
    assert not (tmp_path / "out").exists()
