"""Elastic's model repository in a cluster: a chart value, through the operator's settings, to the pods' pull."""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest
import yaml

from infernetes.operator.kube.planner import pull_command
from infernetes.operator.kube.settings import OperatorSettings

CHART = Path(__file__).resolve().parents[2] / "helm" / "infernetes"
REPO = "https://mirror.example/ml-models"


def operator_settings(values: dict) -> OperatorSettings:
    out = helm_python.Chart.load(CHART).render(values, name="infernetes", namespace="search", is_install=True)
    for name, text in out.items():
        for doc in yaml.safe_load_all(text) if not name.endswith("NOTES.txt") else []:
            if doc and doc["kind"] == "ConfigMap" and "operator.yaml" in doc.get("data", {}):
                return OperatorSettings.model_validate(yaml.safe_load(doc["data"]["operator.yaml"]))
    raise AssertionError("no operator ConfigMap rendered")


def test_chart_value_reaches_the_pods_pull_of_built_in_models():
    settings = operator_settings({"modelRepository": {"url": REPO}})
    assert settings.model_repository == REPO
    command = pull_command(".elser_model_2", settings)
    assert command[command.index("--repository") + 1] == REPO
    # Models declared with a hub repository still come from the hub.
    declared = OperatorSettings.model_validate({**settings.model_dump(), "models": {
        "mine": {"repo": "org/mine", "task_type": "text_embedding"}}})
    assert "--repository" not in pull_command("mine", declared)
    assert operator_settings({}).model_repository is None
    assert "--repository" not in pull_command(".elser_model_2", operator_settings({}))


def test_chart_refuses_a_repository_that_is_not_a_url():
    with pytest.raises(Exception, match="modelRepository"):
        operator_settings({"modelRepository": {"url": "ftp://mirror/models"}})


def test_chart_upload_volume_reaches_the_gateway_the_operator_and_the_pods_pull():
    values = {"gateway": {"uploads": {"existingClaim": "model-cache"}},
              "workers": {"credential": {"existingSecret": "worker-cred"}}}
    settings = operator_settings(values)
    assert settings.uploads_dir == "/var/lib/infernetes/uploads"
    assert settings.uploads_url == "http://infernetes.search.svc:9200/_infernetes/uploads"
    command = pull_command("my-eland-model", settings)
    assert command[command.index("--repository") + 1] == settings.uploads_url
    out = helm_python.Chart.load(CHART).render(values, name="infernetes", namespace="search", is_install=True)
    docs = {(d["kind"], d["metadata"]["name"]): d for name, text in out.items() if not name.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d}
    gateway = docs[("Deployment", "infernetes-gateway")]["spec"]["template"]["spec"]
    assert {"name": "uploads", "persistentVolumeClaim": {"claimName": "model-cache"}} in gateway["volumes"]
    mounts = gateway["containers"][0]["volumeMounts"]
    assert {"name": "uploads", "mountPath": settings.uploads_dir} in mounts
    operator = docs[("Deployment", "infernetes")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "INFERNETES_WORKER_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "worker-cred", "key": "token"}}} in operator["env"]
    # Without the value: no upload settings (uploads are refused with a 400 that names the value).
    assert operator_settings({}).uploads_dir is None and operator_settings({}).uploads_url is None
