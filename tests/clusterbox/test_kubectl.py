"""The real kubectl (/usr/bin/kubectl) against the box, with the project's CRDs and examples:
apply (client-side and --server-side), get, describe, scale, wait --for=condition, delete."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

from .conftest import CRDS, KUBECTL, ROOT, wait_for

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
EXAMPLES = ROOT / "examples" / "endpoints"
IE = "/apis/infernetes.dev/v1alpha1/namespaces/default/inferenceendpoints"


def test_kubectl_applies_the_crds_and_an_endpoint_client_side(kubectl: Kubectl, api: httpx.Client) -> None:
    out = kubectl("apply", "-f", str(CRDS)).stdout
    assert "inferenceendpoints.infernetes.dev created" in out and "modeldeployments.infernetes.dev created" in out
    assert "created" in kubectl("apply", "-f", str(EXAMPLES / "03-e5.yaml")).stdout
    obj = json.loads(kubectl("get", "inferenceendpoint", "my-e5-model", "-o", "json").stdout)
    assert obj["spec"]["service_settings"]["num_allocations"] == 1
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    changed = (EXAMPLES / "03-e5.yaml").read_text().replace("num_allocations: 1", "num_allocations: 2")
    assert "configured" in kubectl("apply", "-f", "-", input=changed).stdout
    again = json.loads(kubectl("get", "ie", "my-e5-model", "-o", "json").stdout)
    assert again["spec"]["service_settings"]["num_allocations"] == 2 and again["metadata"]["generation"] == 2
    assert "unchanged" in kubectl("apply", "-f", "-", input=changed).stdout
    refused = kubectl("apply", "-f", "-", input=changed.replace("num_threads: 1", "num_threads: 3"), check=False)
    assert refused.returncode != 0 and "[num_threads] must be a power of 2" in refused.stderr
    names = kubectl("get", "ie", "-o", "name").stdout.split()
    assert names == ["inferenceendpoint.infernetes.dev/my-e5-model"]


def test_kubectl_server_side_apply_and_field_removal(kubectl: Kubectl, api: httpx.Client, tmp_path: Path) -> None:
    kubectl("apply", "--server-side", "-f", str(CRDS))
    doc = (EXAMPLES / "05-e5-adaptive.yaml").read_text()
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-", input=doc).stdout
    name = yaml.safe_load(doc)["metadata"]["name"]
    obj = api.get(f"{IE}/{name}").json()
    managers = {m["manager"]: m["operation"] for m in obj["metadata"]["managedFields"]}
    assert managers == {"kubectl": "Apply"}
    with_label = doc.replace("metadata:\n", "metadata:\n  labels:\n    team: search\n", 1)
    kubectl("apply", "--server-side", "-f", "-", input=with_label)
    assert api.get(f"{IE}/{name}").json()["metadata"]["labels"] == {"team": "search"}
    kubectl("apply", "--server-side", "-f", "-", input=doc)
    assert "labels" not in api.get(f"{IE}/{name}").json()["metadata"], "a label no longer applied is removed"
    # Someone else's field manager: a conflicting apply fails, --force-conflicts takes over.
    api.patch(f"{IE}/{name}", json={"metadata": {"labels": {"team": "other"}}},
              headers={"Content-Type": "application/merge-patch+json"}, params={"fieldManager": "someone"})
    conflict = kubectl("apply", "--server-side", "-f", "-", input=with_label, check=False)
    assert conflict.returncode != 0 and 'conflict with "someone"' in conflict.stderr
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=with_label)
    assert api.get(f"{IE}/{name}").json()["metadata"]["labels"] == {"team": "search"}


def _ready(api: httpx.Client, name: str, status: str = "True") -> None:
    body = {"status": {"state": "started", "conditions": [
        {"type": "Ready", "status": status, "reason": "Started", "message": "all allocations ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    r = api.patch(f"{IE}/{name}/status", json=body, headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text


def test_kubectl_scale_wait_describe_and_delete(kubectl: Kubectl, api: httpx.Client, box: Any) -> None:
    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-f", str(EXAMPLES / "03-e5.yaml"))
    assert "scaled" in kubectl("scale", "ie/my-e5-model", "--replicas=3").stdout
    assert api.get(f"{IE}/my-e5-model").json()["spec"]["service_settings"]["num_allocations"] == 3
    timed_out = kubectl("wait", "ie/my-e5-model", "--for=condition=Ready", "--timeout=1s", check=False)
    assert timed_out.returncode != 0 and "timed out" in timed_out.stderr
    waiting = subprocess.Popen([KUBECTL, "--kubeconfig", str(kubectl.kubeconfig), "wait", "ie/my-e5-model",  # type: ignore[attr-defined]
                                "--for=condition=Ready", "--timeout=30s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(v == "watch" and r == "inferenceendpoints" for v, r, _ in box.requests()), what="kubectl to watch")
        _ready(api, "my-e5-model")
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert "condition met" in out
    uid = api.get(f"{IE}/my-e5-model").json()["metadata"]["uid"]
    for name, reason in [("e1", "Scaled"), ("e2", "Elsewhere")]:
        involved = {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint", "namespace": "default",
                    "name": "my-e5-model" if reason == "Scaled" else "other", "uid": uid if reason == "Scaled" else "x"}
        assert api.post("/api/v1/namespaces/default/events", json={
            "metadata": {"name": name}, "involvedObject": involved, "reason": reason, "message": f"{reason} to 3",
            "type": "Normal", "source": {"component": "infernetes"}, "count": 1}).status_code == 201
    described = kubectl("describe", "ie", "my-e5-model").stdout
    assert "Name:         my-e5-model" in described and "num_allocations:  3" in described and "Ready" in described
    assert "Scaled to 3" in described and "Elsewhere" not in described, "describe selects the object's events by field"
    deleted = kubectl("delete", "-f", str(EXAMPLES / "03-e5.yaml")).stdout
    assert 'inferenceendpoint.infernetes.dev "my-e5-model" deleted' in deleted
    assert api.get(f"{IE}/my-e5-model").status_code == 404
    assert "No resources found" in kubectl("get", "ie").stderr


def test_kubectl_drives_built_in_kinds(kubectl: Kubectl, api: httpx.Client) -> None:
    manifest = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {disk: ssd}
      containers:
      - name: main
        image: infernetes:dev
        env: [{name: A, value: "1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {level: info}
"""
    kubectl("apply", "-f", "-", input=manifest)
    dropped = manifest.replace("      nodeSelector: {disk: ssd}\n", "").replace('value: "1"', 'value: "2"')
    kubectl("apply", "-f", "-", input=dropped)
    deploy = api.get("/apis/apps/v1/namespaces/default/deployments/web").json()
    spec = deploy["spec"]["template"]["spec"]
    assert "nodeSelector" not in spec, "client-side apply removes what the last applied configuration had"
    assert spec["containers"][0]["env"] == [{"name": "A", "value": "2"}]
    kubectl("scale", "deployment/web", "--replicas=4")
    scale = api.get("/apis/apps/v1/namespaces/default/deployments/web/scale").json()
    assert scale["spec"]["replicas"] == 4 and scale["status"]["selector"] == "app=web"
    got = json.loads(kubectl("get", "deploy,cm", "-o", "json").stdout)
    assert [(i["kind"], i["metadata"]["name"]) for i in got["items"]] == [("Deployment", "web"), ("ConfigMap", "settings")]
    assert "Replicas:" in kubectl("describe", "deployment", "web").stdout
    kubectl("delete", "-f", "-", input=manifest)
    assert api.get("/apis/apps/v1/namespaces/default/deployments/web").status_code == 404


def test_make_cluster_entry_serves_kubectl_until_terminated(tmp_path: Path) -> None:
    """What `make cluster` runs: the script prints its kubeconfig, kubectl works, SIGTERM stops it."""
    import signal
    import sys

    config = tmp_path / "kubeconfig"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("__main__.py")), "--kubeconfig", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1].strip() == f"kubeconfig: {config}", lines
        got = subprocess.run([KUBECTL, "--kubeconfig", str(config), "get", "namespaces", "-o", "name"],
                             capture_output=True, text=True, timeout=60)
        assert "namespace/default" in got.stdout.split(), got.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_kubectl_get_prints_the_crds_printer_columns_for_every_example(kubectl: Kubectl, api: httpx.Client) -> None:
    kubectl("apply", "-f", str(CRDS))
    out = kubectl("apply", "-f", str(EXAMPLES)).stdout
    documents = [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert out.count(" created") == len(documents), out
    api.patch(f"{IE}/my-e5-model/status", json={"status": {"model_id": ".multilingual-e5-small", "allocations": "1/1", "state": "started"}},
              headers={"Content-Type": "application/merge-patch+json"})
    lines = kubectl("get", "ie", "my-e5-model").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "MODEL", "ALLOCATIONS", "STATE", "AGE"]
    name, task, model, allocations, state, age = lines[1].split()
    assert (name, task, model, allocations, state) == ("my-e5-model", "text_embedding", ".multilingual-e5-small", "1/1", "started")
    assert age.endswith("s")
    listed = kubectl("get", "ie", "-A").stdout.splitlines()
    endpoints = [d for d in documents if d["kind"] == "InferenceEndpoint"]
    assert listed[0].split()[:2] == ["NAMESPACE", "NAME"] and len(listed) == 1 + len(endpoints)


def test_kubectl_get_watch_prints_changes_with_the_printer_columns(kubectl: Kubectl, api: httpx.Client, box: Any) -> None:
    import threading

    kubectl("apply", "-f", str(CRDS))
    kubectl("apply", "-f", str(EXAMPLES / "03-e5.yaml"))
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", str(kubectl.kubeconfig), "get", "ie", "-w"],  # type: ignore[attr-defined]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(v == "watch" and r == "inferenceendpoints" for v, r, _ in box.requests()), what="kubectl to watch")
        api.patch(f"{IE}/my-e5-model/status", json={"status": {"state": "started"}},
                  headers={"Content-Type": "application/merge-patch+json"})
        wait_for(lambda: any("started" in line for line in lines), what="the watched change to be printed")
    finally:
        proc.terminate()
        proc.wait(10)
    assert lines[0].split() == ["NAME", "TASK", "MODEL", "ALLOCATIONS", "STATE", "AGE"]
    assert sum(1 for line in lines if line.startswith("NAME")) == 1, "one header: later events carry no column definitions"
    assert next(line for line in lines if "started" in line).split()[:3] == ["my-e5-model", "text_embedding", "started"]
