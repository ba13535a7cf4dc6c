"""The Helm chart, rendered by a real Helm (helm-python-sdk): valid objects for every option, a schema
that refuses bad values, the CRDs of crds/ themselves, and settings the operator accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from infernetes.operator.kube.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "infernetes"
NAMESPACE = "infernetes-system"
# Prometheus Operator kinds: not in the Kubernetes schemas; checked for shape only.
NOT_BUILTIN = {"ServiceMonitor", "PodMonitor"}

FEATURES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster-wide": {"clusterWide": True},
    "namespaces": {"watchNamespaces": ["search", "ingest"]},
    "shared-model-cache": {"modelCache": {"persistentVolumeClaim": {"enabled": True, "storageClassName": "nfs",
                                                                    "size": "100Gi"}}},
    "existing-model-cache": {"modelCache": {"persistentVolumeClaim": {"enabled": True, "existingClaim": "models"}}},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "network-policy": {"networkPolicy": {"enabled": True, "gatewayFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "elastic"}}}]}},
    "existing-api-keys": {"auth": {"existingSecret": "my-keys"}},
    "no-auth": {"auth": {"enabled": False}},
    "operator-only": {"gateway": {"enabled": False}},
    "worker-scheduling": {"workers": {"nodeSelector": {"pool": "ml"}, "priorityClassName": "inference",
                                      "lowPriorityClassName": "inference-low",
                                      "tolerations": [{"key": "ml", "operator": "Exists", "effect": "NoSchedule"}],
                                      "affinity": {"podAntiAffinity": {}}},
                          "modelHub": {"url": "https://mirror.example", "tokenSecret": "hf"},
                          "models": {"msmarco-MiniLM-L12-cos-v5": {
                              "repo": "sentence-transformers/msmarco-MiniLM-L12-cos-v5", "task_type": "text_embedding"}},
                          "modelCache": {"seedDir": "/opt/infernetes/seed"},
                          "imagePullSecrets": ["registry"], "image": {"tag": "0.1.0-cuda"}},
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(CHART)
    out = chart.render(values, name="infernetes", namespace=NAMESPACE, is_install=True)
    docs = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def kinds(docs):
    return sorted(d["kind"] for d in docs)


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_every_rendered_object_is_valid(feature):
    docs = render(FEATURES[feature])
    assert docs
    for doc in docs:
        if doc["kind"] in NOT_BUILTIN:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]
        else:
            kubernetes_validate.validate(doc, "1.37", strict=True)


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_operator_settings_are_accepted(feature):
    (cm,) = [d for d in render(FEATURES[feature]) if d["kind"] == "ConfigMap"]
    settings = OperatorSettings.model_validate(yaml.safe_load(cm["data"]["operator.yaml"]))
    if feature == "worker-scheduling":
        assert settings.node_selector == {"pool": "ml"} and settings.priority_class_name == "inference"
        assert settings.low_priority_class_name == "inference-low"
        assert settings.image.endswith(":0.1.0-cuda") and settings.model_hub == "https://mirror.example"
        assert settings.models["msmarco-MiniLM-L12-cos-v5"].task_type == "text_embedding"
        assert settings.hub_token_secret == "hf" and settings.seed_dir == "/opt/infernetes/seed"
    if feature == "shared-model-cache":
        assert settings.model_cache_pvc == "infernetes-models"
    if feature == "defaults":  # chart defaults are the operator's, plus the worker credential (on by default)
        assert settings == OperatorSettings(image=settings.image,
                                            worker_credential_secret="infernetes-worker-credential")


def operator_roles(docs):
    """The operator's Roles (not the gateway's nor the leader election's)."""
    return [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "infernetes"]


def test_rbac_modes():
    default = render({})
    assert len(operator_roles(default)) == 1 and "ClusterRole" not in kinds(default)
    namespaced = render({"watchNamespaces": ["search", "ingest"]})
    assert sorted(d["metadata"]["namespace"] for d in operator_roles(namespaced)) == ["ingest", "search"]
    cluster = render({"clusterWide": True})
    assert "ClusterRole" in kinds(cluster) and not operator_roles(cluster)
    (role,) = [d for d in cluster if d["kind"] == "ClusterRole"]
    assert role["rules"] == yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    verbs = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
             for v in rule["verbs"]}
    assert ("", "secrets", "get") not in verbs and not any(r == "*" or v == "*" for _, r, v in verbs)


def deployment(docs, component):
    (dep,) = [d for d in docs if d["kind"] == "Deployment"
              and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return dep


@pytest.mark.parametrize("component", ["operator", "gateway"])
def test_pods_are_locked_down(component):
    dep = deployment(render({}), component)
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in c["env"]}
    if component == "operator":
        assert "--namespace=infernetes-system" in c["args"] and "--no-gateway" in c["args"]
        assert "INFERNETES_API_KEYS_FILE" not in env and "INFERNETES_WORKER_AUTH_TOKEN" not in env
    else:
        assert c["command"] == ["infernetes", "gateway"] and "--namespace=infernetes-system" in c["args"]
        assert env["INFERNETES_API_KEYS_FILE"]["value"] == "/etc/infernetes/api-keys/api-keys.json"


def test_generated_api_key_secret():
    (secret,) = [d for d in render({}) if d["kind"] == "Secret" and d["metadata"]["name"] == "infernetes-api-keys"]
    data = secret["stringData"]
    import base64
    import hashlib
    import json

    keys = json.loads(data["api-keys.json"])
    assert keys[0]["hash"] == "sha256::" + hashlib.sha256(data["key"].encode()).hexdigest()
    assert base64.b64decode(data["encoded"]).decode() == f"{data['id']}:{data['key']}"
    assert not [d for d in render({"auth": {"existingSecret": "mine"}})
                if d["kind"] == "Secret" and "api-keys.json" in d["stringData"]]


def test_network_policies_cover_workers_gateway_and_operator():
    policies = [d for d in render({"networkPolicy": {"enabled": True}}) if d["kind"] == "NetworkPolicy"]
    names = {p["metadata"]["name"] for p in policies}
    assert names == {"infernetes-workers", "infernetes-gateway", "infernetes-operator"}
    workers = next(p for p in policies if p["metadata"]["name"] == "infernetes-workers")
    assert workers["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    sources = workers["spec"]["ingress"][0]["from"]
    # The gateway, the operator (the autoscaler's /metrics) and Prometheus, nobody else.
    assert [s["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for s in sources] == [
        "gateway", "operator", None]


@pytest.mark.parametrize("bad", [
    {"gateway": {"port": "9200"}},
    {"workers": {"queueCapacity": 0}},
    {"image": {"pullPolicy": "Sometimes"}},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"models": {"x": {"repo": "not a repo", "task_type": "text_embedding"}}},
    {"models": {"x": {"repo": "a/b", "task_type": "completion"}}},
    {"modelCache": {"persistentVolumeClaim": {"size": "lots"}}},
    {"typo": True},
    {"auth": {"enable": True}},
])
def test_schema_refuses_bad_values(bad):
    with pytest.raises(helm_python.HelmError):
        render(bad)


def test_chart_crds_are_the_files_in_crds():
    chart = helm_python.Chart.load(CHART)
    files = {Path(c["name"]).name: c["data"] for c in chart.crds}
    assert set(files) == {p.name for p in (ROOT / "crds").glob("*.yaml")}
    for name, data in files.items():
        assert data == (ROOT / "crds" / name).read_text()


def test_lint():
    result = helm_python.lint(CHART, {}, strict=True, namespace=NAMESPACE, kube_version="1.31.0")
    messages = result.get("messages") or []
    # Helm's severities: 1 info ("icon is recommended"), 2 warning, 3 error.
    assert not [m for m in messages if m["severity"] >= 2], messages


def test_notes_tell_how_to_start():
    chart = helm_python.Chart.load(CHART)
    notes = chart.render({}, name="infernetes", namespace=NAMESPACE)["infernetes/templates/NOTES.txt"]
    assert "kind: InferenceEndpoint" in notes and "kubectl wait" in notes and "Authorization: ApiKey" in notes
