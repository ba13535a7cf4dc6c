"""The real-cluster test: run by scripts/kind-e2e.sh (make kind-e2e) against kind, after it installed the
chart and applied examples/endpoints/03-e5.yaml and 06-use-existing-deployment.yaml.

Skipped unless INFERNETES_E2E_URL points at the gateway (no cluster exists on the build machines)."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import pytest

URL = os.environ.get("INFERNETES_E2E_URL")
NS = os.environ.get("INFERNETES_E2E_NAMESPACE", "infernetes-system")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not URL, reason="needs a cluster: run scripts/kind-e2e.sh")]


@pytest.fixture(scope="module")
def es():
    headers = {"Authorization": f"ApiKey {os.environ['INFERNETES_E2E_API_KEY']}"} \
        if os.environ.get("INFERNETES_E2E_API_KEY") else {}
    with httpx.Client(base_url=URL, headers=headers, timeout=120) as client:
        yield client


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", "-n", NS, *args], check=True, capture_output=True, text=True).stdout


def test_applied_endpoints_serve(es):
    out = es.post("/_inference/text_embedding/my-e5-model", json={"input": ["hello", "bonjour"],
                                                                  "input_type": "SEARCH"})
    assert out.status_code == 200, out.text
    assert [len(e["embedding"]) for e in out.json()["text_embedding"]] == [384, 384]
    sparse = es.post("/_inference/sparse_embedding/use_existing_deployment", json={"input": "northern lights"})
    assert sparse.status_code == 200 and sparse.json()["sparse_embedding"][0]["embedding"]
    stats = es.get("/_ml/trained_models/my-e5-model/_stats").json()["trained_model_stats"][0]["deployment_stats"]
    assert stats["allocation_status"]["state"] == "fully_allocated"


def test_rest_and_kubectl_see_the_same_endpoints(es):
    created = es.put("/_inference/rerank/e2e_rerank?timeout=15m", json={
        "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                         "model_id": ".rerank-v1"}})
    assert created.status_code == 200, created.text
    names = kubectl("get", "ie", "-o", "name")
    assert "e2e-rerank-" in names
    ranked = es.post("/_inference/rerank/e2e_rerank", json={"query": "bread", "input": ["stocks", "bake bread"]})
    assert ranked.json()["rerank"][0]["index"] == 1
    assert es.delete("/_inference/e2e_rerank").json()["acknowledged"] is True


def test_scale_and_pod_replacement(es):
    kubectl("scale", "ie/my-e5-model", "--replicas=2")
    deadline = time.time() + 900
    while time.time() < deadline:
        d = es.get("/_ml/trained_models/my-e5-model/_stats").json()["trained_model_stats"][0]["deployment_stats"]
        if d["allocation_status"] == {"allocation_count": 2, "target_allocation_count": 2, "state": "fully_allocated"}:
            break
        time.sleep(5)
    else:
        pytest.fail("did not reach 2 allocations")
    pod = kubectl("get", "pods", "-l", "infernetes.dev/deployment=my-e5-model", "-o", "name").split()[0]
    kubectl("delete", pod, "--wait=false")
    for _ in range(20):  # requests keep being answered while the Deployment replaces the pod
        assert es.post("/_inference/my-e5-model", json={"input": "still serving"}).status_code == 200
    kubectl("wait", "--for=condition=Ready", "ie/my-e5-model", "--timeout=10m")
