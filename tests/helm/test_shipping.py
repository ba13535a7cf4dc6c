"""What ships besides the chart: the image's Dockerfile, plain manifests, examples, GitOps health checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crdcheck import validate

from infernetes.operator.kube.crd import deployment_crd, endpoint_crd
from infernetes.operator.kube.resources import deployment_from_cr, endpoint_from_cr
from infernetes.operator.kube.status import compute_status

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in text and ":latest" not in text
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert "ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm" in text  # a pinned base, never a floating tag
    assert "ARG TORCH_VARIANT=cpu" in text


def test_plain_manifests_are_rendered_from_the_chart():
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "scripts" / "render_deploy.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for doc in yaml.safe_load_all((ROOT / "deploy" / "infernetes.yaml").read_text()):
        kubernetes_validate.validate(doc, "1.37", strict=True)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "endpoints").glob("*.yaml")), ids=lambda p: p.name)
def test_example_endpoints_are_valid(path):
    for doc in yaml.safe_load_all(path.read_text()):
        doc["metadata"].setdefault("namespace", "search")
        if doc["kind"] == "InferenceEndpoint":
            assert validate(endpoint_crd(), doc) == []
            endpoint_from_cr(doc)
        else:
            assert validate(deployment_crd(), doc) == []
            deployment_from_cr(doc)


def _health(obj: dict) -> tuple[str, str]:
    import lupa

    lua = lupa.LuaRuntime()

    def table(value):
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    script = (ROOT / "examples" / "gitops" / "argocd-health.lua").read_text()
    check = lua.eval(f"function(obj)\n{script}\nend")
    result = check(table(obj))
    return result["status"], result["message"]


def _endpoint(status: dict | None, generation: int = 2) -> dict:
    obj = {"metadata": {"name": "e", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def _status(ready: int, target: int, problem=None, generation: int = 2) -> dict:
    return compute_status(deployment_id="d", model_id="m", target=target, workload={"spec": {"replicas": target}},
                          pods=[{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}] * ready,
                          generation=generation, problem=problem, previous=None, now="2026-11-27T00:00:00Z")


@pytest.mark.parametrize(("obj", "expected"), [
    (_endpoint(None), "Progressing"),
    (_endpoint(_status(0, 1)), "Progressing"),
    (_endpoint(_status(1, 1)), "Healthy"),
    (_endpoint(_status(1, 2)), "Healthy"),
    (_endpoint(_status(0, 1, problem=("InvalidSpec", "bad"))), "Degraded"),
    (_endpoint(_status(1, 1, generation=1), generation=2), "Progressing"),  # spec not yet acted on
])
def test_argocd_health_check(obj, expected):
    assert _health(obj)[0] == expected


def test_argocd_cm_patch_carries_the_health_check():
    patch = yaml.safe_load((ROOT / "examples" / "gitops" / "argocd-cm-patch.yaml").read_text())
    script = (ROOT / "examples" / "gitops" / "argocd-health.lua").read_text()
    for kind in ("InferenceEndpoint", "ModelDeployment"):
        assert patch["data"][f"resource.customizations.health.infernetes.dev_{kind}"].strip() == script.strip()


def test_gitops_manifests_parse():
    for path in (ROOT / "examples" / "gitops").glob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert all(isinstance(d, dict) for d in docs)
