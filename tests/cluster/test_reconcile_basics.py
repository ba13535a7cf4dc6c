"""The operator's everyday behaviour on the cluster box (moved from the kmock tests, which cannot express
server-side apply): workload and status, readiness from pods, scaling by spec, model and task checks,
a shared deployment's protected and forced deletion, num_threads, and a restart without churn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from clusterbox import ClusterBox

from cluster.conftest import (DEPLOYMENTS, EVENTS, IE, MD, NS, SERVICES, RunningOperator, endpoint, eventually, get,
                              make_pod, set_pod_status)
from infernetes.operator.kube import API_VERSION
from infernetes.operator.kube.planner import workload_name

pytestmark = pytest.mark.slow  # each starts the operator (kopf) in a thread
MERGE = {"Content-Type": "application/merge-patch+json"}
OPERATOR_USER = "system:serviceaccount:infernetes-system:infernetes"
READY = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}


def _status(admin: httpx.Client, name: str, path: str = IE) -> dict[str, Any]:
    return (get(admin, f"{path}/{name}") or {}).get("status") or {}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def _wait_status(admin: httpx.Client, name: str, predicate: Callable[[dict[str, Any]], bool], path: str = IE,
                 what: str = "the status") -> dict[str, Any]:
    return eventually(lambda: (s := _status(admin, name, path)) and s.get("state") and predicate(s) and s, what=what)


def _ready_pods(admin: httpx.Client, workload: dict[str, Any], names: list[str]) -> None:
    for name in names:
        make_pod(admin, workload, name)
        set_pod_status(admin, name, READY)


def test_create_makes_deployment_service_and_status(admin: httpx.Client, operator: RunningOperator) -> None:
    assert admin.post(IE, json=endpoint("my-e5-model")).status_code == 201
    dep = eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-my-e5-model"), what="the Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceEndpoint"
    svc = eventually(lambda: get(admin, f"{SERVICES}/infernetes-my-e5-model"), what="the Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    st = _wait_status(admin, "my-e5-model", lambda s: True)
    assert st["state"] == "starting" and st["target_allocation_count"] == 1 and st["allocations"] == "0/1"
    assert {c["type"] for c in st["conditions"]} == {"Ready", "ModelReady", "Progressing"}
    _ready_pods(admin, dep, ["my-e5-model-0"])
    st = _wait_status(admin, "my-e5-model", lambda s: s["allocation_count"] == 1)
    assert (st["state"], st["allocation_state"]) == ("started", "fully_allocated")
    assert _condition(st, "Ready")["status"] == "True"
    assert st["selector"] == "infernetes.dev/deployment=my-e5-model"


def test_spec_update_scales_the_deployment(admin: httpx.Client, operator: RunningOperator) -> None:
    assert admin.post(IE, json=endpoint("scaled")).status_code == 201
    eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-scaled"), what="the Deployment")
    # What `kubectl scale ie/scaled --replicas=3` does through the scale subresource.
    r = admin.patch(f"{IE}/scaled/scale", json={"spec": {"replicas": 3}}, headers=MERGE)
    assert r.status_code == 200, r.text
    eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-scaled")["spec"]["replicas"] == 3, what="3 replicas")
    st = _wait_status(admin, "scaled", lambda s: s.get("observedGeneration") == 2)
    assert st["target_allocation_count"] == 3


def test_unknown_model_task_mismatch_and_invalid_threads(admin: httpx.Client, operator: RunningOperator) -> None:
    r = admin.post(IE, json=endpoint("bad-threads", num_threads=3) | {"spec": {
        **endpoint("x")["spec"], "service_settings": {"model_id": ".multilingual-e5-small", "num_allocations": 1,
                                                      "num_threads": 3}}})
    assert r.status_code == 422 and "power of 2" in r.text, "the CRD refuses it before the operator sees it"
    assert admin.post(IE, json=endpoint("unknown-model", model_id="not-declared")).status_code == 201
    st = _wait_status(admin, "unknown-model", lambda s: s["state"] == "failed")
    assert _condition(st, "Ready")["reason"] == "ModelNotFound"
    assert "Could not find trained model [not-declared]" in st["reason"]
    assert admin.post(IE, json=endpoint("mismatch", model_id=".elser_model_2")).status_code == 201
    st = _wait_status(admin, "mismatch", lambda s: s["state"] == "failed")
    assert "serves the [sparse_embedding] task" in st["reason"]
    assert admin.get(DEPLOYMENTS).json()["items"] == [], "no workload for a spec that cannot be served"


def test_deployment_reuse_and_protected_deletion(admin: httpx.Client, operator: RunningOperator) -> None:
    md = {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": "elser"},
          "spec": {"model_id": ".elser_model_2", "deployment_id": ".elser_model_2", "number_of_allocations": 2}}
    assert admin.post(MD, json=md).status_code == 201
    workload = eventually(lambda: get(admin, f"{DEPLOYMENTS}/{workload_name('.elser_model_2')}"), what="the workload")
    assert workload["spec"]["replicas"] == 2
    reuse = {"apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": "use-existing-deployment"},
             "spec": {"task_type": "sparse_embedding", "service": "elasticsearch",
                      "inference_id": "use_existing_deployment",
                      "service_settings": {"deployment_id": ".elser_model_2"}}}
    assert admin.post(IE, json=reuse).status_code == 201
    _ready_pods(admin, workload, ["elser-0", "elser-1"])
    st = _wait_status(admin, "use-existing-deployment", lambda s: s["allocation_count"] == 2)
    assert st["model_id"] == ".elser_model_2" and st["deployment_id"] == ".elser_model_2"
    assert not get(admin, f"{IE}/use-existing-deployment")["metadata"].get("finalizers")
    assert len(admin.get(DEPLOYMENTS).json()["items"]) == 1, "the reusing endpoint created no workload"
    eventually(lambda: get(admin, f"{MD}/elser")["metadata"].get("finalizers"), what="the owner's finalizer")
    assert admin.delete(f"{MD}/elser").status_code == 200
    event = eventually(lambda: next((e for e in admin.get(EVENTS).json()["items"] if e["reason"] == "DeletionBlocked"),
                                    None), what="the blocked deletion reported")
    assert "[use_existing_deployment]" in event["message"]
    assert get(admin, f"{MD}/elser") is not None, "held by the finalizer"
    assert admin.delete(f"{IE}/use-existing-deployment").status_code == 200
    eventually(lambda: admin.get(f"{MD}/elser").status_code == 404, what="the owner released")


def test_forced_deletion(admin: httpx.Client, operator: RunningOperator) -> None:
    assert admin.post(IE, json=endpoint("owner")).status_code == 201
    eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-owner"), what="the workload")
    borrower = {**endpoint("borrower"), "spec": {**endpoint("borrower")["spec"],
                                                 "service_settings": {"deployment_id": "owner"}}}
    assert admin.post(IE, json=borrower).status_code == 201
    eventually(lambda: get(admin, f"{IE}/owner")["metadata"].get("finalizers"), what="the owner's finalizer")
    admin.patch(f"{IE}/owner", json={"metadata": {"annotations": {"infernetes.dev/force-delete": "true"}}},
                headers=MERGE)
    assert admin.delete(f"{IE}/owner").status_code == 200
    eventually(lambda: admin.get(f"{IE}/owner").status_code == 404, what="the forced deletion")
    st = _wait_status(admin, "borrower", lambda s: s["state"] == "failed")
    assert "Could not find deployment [owner]" in st["reason"]


def test_num_threads_change_is_refused(admin: httpx.Client, operator: RunningOperator) -> None:
    assert admin.post(IE, json=endpoint("fixed-threads")).status_code == 201
    before = eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-fixed-threads"), what="the workload")
    r = admin.patch(f"{IE}/fixed-threads", json={"spec": {"service_settings": {"num_threads": 4}}}, headers=MERGE)
    assert r.status_code == 422 and "[num_threads] cannot be updated" in r.json()["message"]
    assert get(admin, f"{DEPLOYMENTS}/infernetes-fixed-threads")["spec"]["template"] == before["spec"]["template"]


def test_restart_converges_without_churn(cluster_box: ClusterBox, admin: httpx.Client,
                                         start_operator: Callable[..., RunningOperator]) -> None:
    first = start_operator()
    assert admin.post(IE, json=endpoint("survivor")).status_code == 201
    dep = eventually(lambda: get(admin, f"{DEPLOYMENTS}/infernetes-survivor"), what="the workload")
    _ready_pods(admin, dep, ["survivor-0"])
    _wait_status(admin, "survivor", lambda s: s["allocation_state"] == "fully_allocated")
    first.stop()
    before = len(cluster_box.requests())
    second = start_operator()
    eventually(lambda: second.reconciled("survivor", 3), what="the restarted operator's reconciles")
    writes = [(verb, plural) for verb, plural, user in cluster_box.requests()[before:]
              if user == OPERATOR_USER and verb in ("create", "update", "patch", "delete")
              and plural != "events"]
    assert writes == [], "a restart must not write workloads or statuses that are already right"
    assert len(admin.get(DEPLOYMENTS).json()["items"]) == 1
    assert admin.get(f"/api/v1/namespaces/{NS}/pods").json()["items"][0]["metadata"]["name"] == "survivor-0"
