"""Issue 12, honest status (#7, #12): observedGeneration only once a generation was applied; pod and rollout
failures become Ready=False with the reason at once and state `failed` (Argo CD: Degraded) after
`failure_after_s` (ProgressDeadlineExceeded: at once). The pure rules first, then the operator on the box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from clusterbox import ClusterBox

from cluster.conftest import (DEPLOYMENTS, IE, RunningOperator, endpoint, eventually, get, make_pod, set_pod_status)
from infernetes.operator.kube.planner import workload_name
from infernetes.operator.kube.status import compute_status

ROOT = Path(__file__).resolve().parents[2]
MERGE = {"Content-Type": "application/merge-patch+json"}
T0, LATER = "2026-12-01T10:00:00Z", "2026-12-01T10:10:00Z"


def _argo(obj: dict[str, Any]) -> str:
    """The Argo CD health check of examples/gitops, run as Argo CD runs it (Lua)."""
    import lupa

    lua = lupa.LuaRuntime()

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    check = lua.eval(f"function(obj)\n{(ROOT / 'examples/gitops/argocd-health.lua').read_text()}\nend")
    return str(check(table(obj))["status"])


def _worker(state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0) -> dict[str, Any]:
    return {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "worker", "ready": False, "restartCount": restarts,
                                              "image": "worker", "imageID": "worker@sha256:0",
                                              "state": state, "lastState": last or {}}]}}


CRASH = _worker({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                {"terminated": {"exitCode": 1, "reason": "Error", "message": "worker: bad flag"}}, restarts=3)
OOM = _worker({"waiting": {"reason": "CrashLoopBackOff"}}, {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, 2)
PULL = _worker({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope\""}})
ERR_PULL = {"status": {"phase": "Pending", "initContainerStatuses": [
    {"name": "pull-model", "image": "nope", "imageID": "", "ready": False, "restartCount": 0,
     "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}
DEADLINE = {"spec": {"replicas": 1}, "status": {"conditions": [
    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
     "message": "ReplicaSet \"w-1\" has timed out progressing."}]}}
QUOTA = {"spec": {"replicas": 1}, "status": {"conditions": [
    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
     "message": "pods \"w-1-x\" is forbidden: exceeded quota: compute, requested: cpu=1, used: cpu=4, limited: cpu=4"}]}}


def _status(pods: list[dict[str, Any]], workload: dict[str, Any] | None = None, previous: dict[str, Any] | None = None,
            now: str = T0, failure_after_s: float = 300) -> dict[str, Any]:
    return compute_status(deployment_id="e5", model_id="m", target=1, workload=workload or {"spec": {"replicas": 1}},
                          pods=pods, generation=1, problem=None, previous=previous, now=now,
                          failure_after_s=failure_after_s)


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize(("pods", "workload", "reason"), [
    ([CRASH], None, "CrashLoopBackOff"),
    ([OOM], None, "OOMKilled"),
    ([PULL], None, "ImagePullFailed"),
    ([ERR_PULL], None, "ImagePullFailed"),
    ([], QUOTA, "FailedCreate"),
])
def test_a_failure_is_ready_false_at_once_and_failed_after_the_threshold(
        pods: list[dict[str, Any]], workload: dict[str, Any] | None, reason: str) -> None:
    first = _status(pods, workload)
    assert (_ready(first)["status"], _ready(first)["reason"], first["state"]) == ("False", reason, "starting")
    obj = {"metadata": {"generation": 1}, "status": first}
    assert _argo(obj) == "Progressing"
    assert first["failure"] == {"reason": reason, "since": T0}
    later = _status(pods, workload, previous=first, now=LATER)  # 600 s on: past the 300 s threshold
    assert (later["state"], _ready(later)["reason"], later["failure"]["since"]) == ("failed", reason, T0)
    assert _argo({"metadata": {"generation": 1}, "status": later}) == "Degraded"
    healed = _status([{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}], previous=later, now=LATER)
    assert healed["state"] == "started" and healed["failure"] is None, "None removes it (merge patch)"


def test_a_rollout_past_its_deadline_is_failed_at_once() -> None:
    status = _status([], DEADLINE)
    assert status["state"] == "failed" and _ready(status)["reason"] == "ProgressDeadlineExceeded"
    assert _argo({"metadata": {"generation": 1}, "status": status}) == "Degraded"


def test_a_different_failure_restarts_the_clock() -> None:
    first = _status([PULL])
    crash = _status([CRASH], previous=first, now=LATER)
    assert crash["state"] == "starting" and crash["failure"] == {"reason": "CrashLoopBackOff", "since": LATER}


@pytest.mark.slow
def test_failures_reach_the_conditions_on_the_box(admin: httpx.Client, start_operator: Any) -> None:
    """The operator, watching the pods and the Deployment, reports a crash loop and a quota refusal."""
    start_operator(failure_after_s=0)
    assert admin.post(IE, json=endpoint("crashy")).status_code == 201
    assert admin.post(IE, json=endpoint("quota")).status_code == 201
    workload = eventually(lambda: get(admin, f"{DEPLOYMENTS}/{workload_name('crashy')}"), what="the workload")
    make_pod(admin, workload, "crashy-1")
    set_pod_status(admin, "crashy-1", CRASH["status"])
    eventually(lambda: get(admin, f"{DEPLOYMENTS}/{workload_name('quota')}"), what="the quota workload")
    r = admin.patch(f"{DEPLOYMENTS}/{workload_name('quota')}/status", json={"status": QUOTA["status"]}, headers=MERGE)
    assert r.status_code == 200, r.text
    for name, reason in (("crashy", "CrashLoopBackOff"), ("quota", "FailedCreate")):
        status = eventually(lambda: (s := (get(admin, f"{IE}/{name}") or {}).get("status") or {}) and
                            s.get("state") == "failed" and s, what=f"{name} failed")
        assert _ready(status)["status"] == "False" and _ready(status)["reason"] == reason
        assert _argo(get(admin, f"{IE}/{name}")) == "Degraded"


@pytest.mark.slow
def test_observed_generation_waits_until_the_generation_is_applied(cluster_box: ClusterBox, admin: httpx.Client,
                                                                  operator: RunningOperator) -> None:
    """#7: the status loop reported every generation as observed, even while its patch was being refused."""
    assert admin.post(IE, json=endpoint("e5")).status_code == 201
    eventually(lambda: ((get(admin, f"{IE}/e5") or {}).get("status") or {}).get("observedGeneration") == 1,
               what="generation 1 observed")
    cluster_box.faults.inject("500", count=10_000, resource="deployments", verb="patch")
    try:
        r = admin.patch(f"{IE}/e5", json={"spec": {"service_settings": {"num_allocations": 2}}}, headers=MERGE)
        assert r.json()["metadata"]["generation"] == 2
        before = operator.reconciles.get("e5", 0)
        eventually(lambda: operator.reconciled("e5", before + 3) and cluster_box.faults.served.get("500", 0) >= 3,
                   what="several refused applies")
        status = get(admin, f"{IE}/e5")["status"]
        assert status["observedGeneration"] == 1
        assert {c["observedGeneration"] for c in status["conditions"]} == {1}
        assert _argo(get(admin, f"{IE}/e5")) == "Progressing", "Argo CD waits for the generation"
    finally:
        cluster_box.faults.clear()
    eventually(lambda: get(admin, f"{IE}/e5")["status"]["observedGeneration"] == 2, what="generation 2 observed")
    assert get(admin, f"{DEPLOYMENTS}/{workload_name('e5')}")["spec"]["replicas"] == 2
