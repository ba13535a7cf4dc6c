"""The chart does what README and NOTES.txt say: with watchNamespaces the gateway serves a namespace
the operator watches (and NOTES.txt sends endpoints there), the model cache exists where the worker
pods run, and the image `make image` builds is the one the chart deploys by default."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "infernetes"
NAMESPACE = "infernetes-system"


def render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    out = helm_python.Chart.load(CHART).render(values, name="infernetes", namespace=NAMESPACE, is_install=True)
    docs = [d for name, text in out.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    return docs, out["infernetes/templates/NOTES.txt"]


def gateway_namespace(docs: list[dict[str, Any]]) -> str:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway")]
    (arg,) = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
              if a.startswith("--namespace=")]
    return arg.split("=", 1)[1]


@pytest.mark.parametrize("values,served", [
    ({}, NAMESPACE),
    ({"watchNamespaces": ["search", "ingest"]}, "search"),
    ({"watchNamespaces": ["search", "ingest"], "gateway": {"namespace": "ingest"}}, "ingest"),
    ({"clusterWide": True}, NAMESPACE),
    ({"clusterWide": True, "gateway": {"namespace": "search"}}, "search"),
])
def test_gateway_serves_a_watched_namespace_and_notes_say_so(values, served):
    docs, notes = render(values)
    assert gateway_namespace(docs) == served
    roles = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "infernetes"}
    if not values.get("clusterWide"):
        assert served in roles, "the gateway serves endpoints where the operator has a Role"
    (gateway_role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "infernetes-gateway"]
    assert gateway_role["metadata"]["namespace"] == served, "the gateway's own Role is where it serves"
    assert f"serves the endpoints of namespace {served}." in notes
    assert f"kubectl apply -n {served} -f -" in notes and f"kubectl wait -n {served} " in notes


def test_gateway_namespace_must_be_watched():
    with pytest.raises(Exception, match=r"gateway.namespace \[other\] is not watched"):
        render({"watchNamespaces": ["search", "ingest"], "gateway": {"namespace": "other"}})


def test_model_cache_claim_in_every_namespace_with_workers():
    pvc = {"modelCache": {"persistentVolumeClaim": {"enabled": True, "storageClassName": "nfs"}}}
    docs, _ = render({"watchNamespaces": ["search", "ingest"], **pvc})
    assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "PersistentVolumeClaim") == \
        ["ingest", "search"]
    docs, _ = render(pvc)
    assert [d["metadata"]["namespace"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == [NAMESPACE]


def chart_default_image() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_image_builds_the_charts_default_image():
    out = subprocess.run(["make", "-s", "-n", "image", "CONTAINER_ENGINE=docker"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    built = re.search(r"docker build -t (\S+)", out)
    assert built and built.group(1) == chart_default_image(), out


def test_readme_builds_and_loads_the_same_image():
    readme = (ROOT / "README.md").read_text()
    image = chart_default_image()
    assert "make image" in readme
    assert f"kind load docker-image {image}" in readme
