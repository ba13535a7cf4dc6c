"""The e2e installation fixture: the CRDs and the Helm chart go in through the real kubectl, the
controllers turn the chart's Deployments into scheduled pods, and a Service resolves to a ready pod."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from .conftest import KUBECTL, wait_for
from .fixtures import NAMESPACE, installed


@pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")
def test_install_applies_crds_and_chart_with_kubectl_and_services_resolve_through_endpoint_slices(tmp_path: Path) -> None:
    with installed(tmp_path, values={"gateway": {"replicas": 1}}, wait=False, kubelet=False) as inst, inst.client() as api:
        crds = {c["metadata"]["name"] for c in api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()["items"]}
        assert {"inferenceendpoints.infernetes.dev", "modeldeployments.infernetes.dev"} <= crds
        assert sorted(inst.deployments()) == ["infernetes", "infernetes-gateway"]
        for name in inst.deployments():
            d = api.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}").json()
            assert {m["manager"] for m in d["metadata"]["managedFields"]} >= {"kubectl-client-side-apply"}, "applied by kubectl"
        pods = wait_for(lambda: (p := api.get(f"/api/v1/namespaces/{NAMESPACE}/pods").json()["items"]) and len(p) == 2
                        and all(x["spec"].get("nodeName") == inst.box.node_name for x in p) and p, what="the chart's pods scheduled")
        gateway = next(p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway")

        def report(ready: str) -> None:  # no kubelet here: the test writes what it would
            for i, pod in enumerate(pods):
                api.patch(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}/status", json={"status": {
                    "phase": "Running", "podIP": f"127.0.9.{i + 1}", "conditions": [
                        {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
                    headers={"Content-Type": "application/merge-patch+json"})
        report("False")
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
        wait_for(lambda: any(s["endpoints"] for s in api.get(slices).json()["items"]), what="the not-ready gateway in the slice")
        assert "no ready endpoint" in str(pytest.raises(AssertionError, inst.service_address, "infernetes", timeout=0.2).value)
        report("True")
        inst.wait_available(30)
        ip, port = inst.service_address("infernetes", "http")
        gateway_ip = api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{gateway['metadata']['name']}").json()["status"]["podIP"]
        assert (ip, port) == (gateway_ip, 9200)


def test_a_secrets_string_data_is_stored_as_data(api: Any) -> None:
    """The chart's Secrets use stringData; the API server stores it base64 in data (and never stringData)."""
    body = {"metadata": {"name": "s"}, "data": {"a": base64.b64encode(b"1").decode()}, "stringData": {"token": "xyz"}}
    created = api.post("/api/v1/namespaces/default/secrets", json=body).json()
    assert created["data"] == {"a": "MQ==", "token": base64.b64encode(b"xyz").decode()} and "stringData" not in created
    updated = api.patch("/api/v1/namespaces/default/secrets/s", json={"stringData": {"a": "2"}},
                        headers={"Content-Type": "application/merge-patch+json"}).json()
    assert updated["data"]["a"] == base64.b64encode(b"2").decode() and "stringData" not in updated
