"""Issue 12, defect 2 (the operator half): two operator replicas on the box, leader-elected through the
chart's Lease, each authenticated as the chart's operator ServiceAccount (so the chart's leader-election
Role is what lets them lead). Only the leader reconciles; when it stops, it hands the Lease back and the
other one takes over."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import wait_for

from cluster.gateway_fixtures import NS, endpoint_cr

from .conftest import RELEASE_NS, sa_config
from infernetes.operator.kube.leader import LeaseSettings
from infernetes.operator.kube.main import OperatorThread
from infernetes.operator.kube.planner import workload_name
from infernetes.operator.kube.settings import OperatorSettings

pytestmark = pytest.mark.slow  # two kopf operators
# The chart's --leader-election-lease and --leader-election-namespace.
LEASE = LeaseSettings(name="infernetes-operator", namespace=RELEASE_NS, lease_duration_s=4, renew_deadline_s=3,
                      retry_period_s=0.2)
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/infernetes-operator"


def _operator(box: Any, who: str, seen: dict[str, list[str]]) -> OperatorThread:
    settings = OperatorSettings(status_interval_s=30, autoscale_interval_s=30)
    thread = OperatorThread(sa_config(box), settings, [NS], lease=LeaseSettings(**{**LEASE.__dict__, "identity": who}))
    build = thread.registry_factory

    def recording(reconciler, *args):  # type: ignore[no-untyped-def]
        original = reconciler.reconcile

        async def reconcile(plural, body):  # type: ignore[no-untyped-def]
            seen.setdefault(who, []).append(body["metadata"]["name"])
            return await original(plural, body)

        reconciler.reconcile = reconcile
        return build(reconciler, *args)

    thread.registry_factory = recording
    return thread


def test_only_the_lease_holder_reconciles_and_the_other_takes_over(cluster_box, admin):
    gapi = admin
    seen: dict[str, list[str]] = {}
    a, b = _operator(cluster_box, "a", seen), _operator(cluster_box, "b", seen)
    a.start()
    try:
        wait_for(a.leading.is_set, 30, 0.02, "a to lead")
        b.start()
        wait_for(lambda: gapi.get(LEASE_PATH).json()["spec"]["holderIdentity"] == "a", 30, 0.02, "the lease held by a")
        wait_for(a.ready.is_set, 30, 0.02, "a's kopf")
        gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints", json=endpoint_cr("first"))
        path = f"/apis/apps/v1/namespaces/{NS}/deployments/"
        wait_for(lambda: gapi.get(path + workload_name("first")).status_code == 200, 30, 0.05, "a's reconcile")
        assert b.is_alive() and not b.leading.is_set(), "the second replica must wait for the lease"
        assert "b" not in seen and "first" in seen["a"]

        a.stop_flag.set()  # a rolling update stops the old pod: it hands the lease back
        a.join(30)
        wait_for(b.leading.is_set, 30, 0.02, "b to take over")
        wait_for(b.ready.is_set, 30, 0.02, "b's kopf")
        gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints", json=endpoint_cr("second"))
        wait_for(lambda: gapi.get(path + workload_name("second")).status_code == 200, 30, 0.05, "b's reconcile")
        assert "second" in seen["b"] and "second" not in seen["a"]
        lease = gapi.get(LEASE_PATH).json()["spec"]
        assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] >= 1
    finally:
        for t in (a, b):
            t.stop_flag.set()
        for t in (a, b):
            t.join(30)
    assert a.error is None and b.error is None, (a.error, b.error)
