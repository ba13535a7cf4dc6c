"""Status computed from the workload and pods: Elasticsearch states and Kubernetes conditions."""

from __future__ import annotations

from infernetes.operator.kube.status import compute_status

NOW = "2026-11-27T10:00:00Z"


def pod(ready=False, init=None, worker=None, scheduled=True):
    status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if not scheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": "0/3 nodes have enough cpu"})
    if init is not None:
        status["initContainerStatuses"] = [{"name": "pull-model", **init}]
    if worker is not None:
        status["containerStatuses"] = [{"name": "worker", **worker}]
    return {"metadata": {"name": "p"}, "status": status}


def workload(replicas, ready=0, updated=None):
    return {"spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas if updated is None
                       else updated}}


def status(target, pods, problem=None, previous=None, wl=None):
    return compute_status(deployment_id="d", model_id="m", target=target, workload=wl or workload(target),
                          pods=pods, generation=3, problem=problem, previous=previous, now=NOW)


def cond(st, kind):
    return next(c for c in st["conditions"] if c["type"] == kind)


def test_fully_allocated():
    st = status(2, [pod(True), pod(True)])
    assert (st["state"], st["allocation_state"], st["allocations"]) == ("started", "fully_allocated", "2/2")
    assert cond(st, "Ready")["status"] == "True" and cond(st, "ModelReady")["status"] == "True"
    assert cond(st, "Progressing")["status"] == "False"
    assert st["observedGeneration"] == 3 and st["reason"] == ""


def test_partially_allocated_is_ready_and_progressing():
    st = status(2, [pod(True), pod(False)])
    assert (st["state"], st["allocation_state"]) == ("started", "started")
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Progressing")["reason"] == "Scaling"


def test_downloading():
    st = status(1, [pod(init={"state": {"running": {}}})])
    assert st["state"] == "starting"
    assert cond(st, "Ready")["reason"] == "ModelDownloading"
    assert cond(st, "ModelReady")["status"] == "False"


def test_download_failure_explains_itself():
    message = "Could not download model [.elser_model_2]: ConnectError; to install it without a hub, ..."
    st = status(1, [pod(init={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                              "lastState": {"terminated": {"exitCode": 1, "message": message}}})])
    assert st["state"] == "failed" and st["reason"] == message
    assert cond(st, "Ready")["reason"] == "ModelPullFailed"


def test_model_load_failure():
    st = status(1, [pod(worker={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                "lastState": {"terminated": {"exitCode": 3, "message": "model [m] failed to load"}}})])
    assert st["state"] == "failed" and cond(st, "ModelReady")["reason"] == "ModelLoadFailed"


def test_unschedulable_is_reported():
    st = status(1, [pod(scheduled=False)])
    assert st["state"] == "starting" and "enough cpu" in st["reason"]


def test_scaled_to_zero_is_ready():
    st = status(0, [])
    assert st["state"] == "started" and cond(st, "Ready")["status"] == "True"
    assert cond(st, "ModelReady")["status"] == "Unknown"


def test_invalid_spec():
    st = status(0, [], problem=("InvalidSpec", "Validation Failed: 1: [num_threads] must be a power of 2;"))
    assert st["state"] == "failed"
    assert cond(st, "Ready") | {} == {**cond(st, "Ready"), "status": "False", "reason": "InvalidSpec"}


def test_transition_times_only_move_on_change():
    first = status(1, [pod(False)])
    later = compute_status(deployment_id="d", model_id="m", target=1, workload=workload(1), pods=[pod(False)],
                           generation=3, problem=None, previous=first, now="2026-11-27T11:00:00Z")
    assert cond(later, "Ready")["lastTransitionTime"] == NOW
    ready = compute_status(deployment_id="d", model_id="m", target=1, workload=workload(1), pods=[pod(True)],
                           generation=3, problem=None, previous=first, now="2026-11-27T11:00:00Z")
    assert cond(ready, "Ready")["lastTransitionTime"] == "2026-11-27T11:00:00Z"


def test_rolling_update_is_progressing():
    st = status(2, [pod(True), pod(True)], wl=workload(2, 2, updated=1))
    assert cond(st, "Progressing") | {} == {**cond(st, "Progressing"), "status": "True", "reason": "RollingUpdate"}
