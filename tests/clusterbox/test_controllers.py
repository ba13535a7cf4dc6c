"""The box's controllers: Deployment -> ReplicaSet -> Pods (rolling updates, Recreate, scale,
progress deadline, revision history), the scheduler against the box's Node, and EndpointSlices.
No kubelet runs here: the tests play it by writing pod status through the status subresource."""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from clusterbox import ClusterBox
from clusterbox.controllers import (HASH_LABEL, RSSize, RSView, rollout_replicas, scale_down_old, scale_sizes,
                                    surge_and_unavailable, unschedulable_message)

from .conftest import wait_for
from .test_api import deployment
from .test_kubectl import Kubectl

DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
RS = "/apis/apps/v1/namespaces/default/replicasets"
PODS = "/api/v1/namespaces/default/pods"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
MERGE = {"Content-Type": "application/merge-patch+json"}
_ips = itertools.count(2)


def _items(api: httpx.Client, path: str, **params: str) -> list[dict[str, Any]]:
    r = api.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _pods(api: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return [p for p in _items(api, PODS, **params) if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or ())


def set_ready(api: httpx.Client, pod: dict[str, Any], ready: bool = True) -> None:
    """What the kubelet writes: a pod IP, phase Running and the Ready condition."""
    ip = (pod.get("status") or {}).get("podIP") or f"10.1.0.{next(_ips)}"
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    r = api.patch(f"{PODS}/{pod['metadata']['name']}/status", json={"status": status}, headers=MERGE)
    assert r.status_code == 200, r.text


def make_all_ready(api: httpx.Client) -> None:
    for pod in _pods(api):
        if pod["spec"].get("nodeName") and not _ready(pod):
            set_ready(api, pod)


def _status(api: httpx.Client, name: str = "web") -> dict[str, Any]:
    return api.get(f"{DEPLOY}/{name}").json().get("status") or {}


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c["type"] == type_), {})


def _rolled_out(api: httpx.Client, replicas: int, name: str = "web") -> bool:
    d = api.get(f"{DEPLOY}/{name}").json()
    s = d.get("status") or {}
    return (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas", 0) == replicas
            and s.get("replicas", 0) == replicas and s.get("availableReplicas", 0) == replicas
            and _condition(s, "Progressing").get("reason") == "NewReplicaSetAvailable")


def _settle(api: httpx.Client, replicas: int, name: str = "web", timeout: float = 10) -> None:
    """Play the kubelet until the rollout completes: every bound pod turns ready."""
    wait_for(lambda: make_all_ready(api) or _rolled_out(api, replicas, name), timeout, f"{name} to roll out {replicas} replicas")


def _env(api: httpx.Client, value: str, name: str = "web") -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "env": [{"name": "V", "value": value}]}]}}}}
    r = api.patch(f"{DEPLOY}/{name}", json=patch, headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 200, r.text


@pytest.fixture
def box() -> Iterator[ClusterBox]:
    """This module's box runs its controllers (the shared fixture's does not)."""
    b = ClusterBox(bookmark_interval=0.3).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def small_box() -> Iterator[ClusterBox]:
    b = ClusterBox(node_cpu="1", node_memory="1Gi").start()
    try:
        yield b
    finally:
        b.stop()


# ---- pure decisions ----

@pytest.mark.parametrize("surge, unavailable, desired, expected", [
    (None, None, 4, (1, 1)),  # the 25%/25% defaults
    ("25%", "25%", 3, (1, 0)),  # surge rounds up, unavailable down
    ("50%", 0, 3, (2, 0)),
    (0, 0, 3, (0, 1)),  # both zero: one may be unavailable, or nothing could move
    (1, "100%", 2, (1, 2)),
    (2, 5, 3, (2, 3)),  # unavailable clamped to the replicas
    (1, 1, 0, (1, 0)),
])
def test_max_surge_and_max_unavailable_resolve_ints_and_percentages(surge: Any, unavailable: Any, desired: int,
                                                                    expected: tuple[int, int]) -> None:
    rolling = {k: v for k, v in (("maxSurge", surge), ("maxUnavailable", unavailable)) if v is not None}
    assert surge_and_unavailable({"strategy": {"type": "RollingUpdate", "rollingUpdate": rolling}}, desired) == expected
    assert surge_and_unavailable({"strategy": {"type": "Recreate"}}, desired) == (0, 0)


def test_rollout_steps_keep_within_surge_and_availability() -> None:
    assert rollout_replicas(3, 1, RSView("new", 0, 0), [RSView("old", 3, 3)]) == 1
    assert rollout_replicas(3, 1, RSView("new", 1, 0), [RSView("old", 3, 3)]) == 1, "no more than desired + maxSurge"
    assert rollout_replicas(3, 0, RSView("new", 5, 0), []) == 3
    # maxUnavailable 0: old pods go only as new ones become available.
    assert scale_down_old(3, 0, RSView("new", 1, 0), [RSView("old", 3, 3)]) == {}
    assert scale_down_old(3, 0, RSView("new", 1, 1), [RSView("old", 3, 3)]) == {"old": 2}
    # Unhealthy old replicas are cleaned up first, even while availability is below the minimum.
    assert scale_down_old(3, 1, RSView("new", 1, 1), [RSView("old", 3, 0)]) == {"old": 1}
    assert scale_down_old(3, 1, RSView("new", 1, 0), [RSView("old", 3, 1)]) == {"old": 2}
    # Resized mid-rollout: in proportion (Kubernetes' documented 10 -> 15 example), the rounding leftover to the largest.
    old, new = RSSize("old", 8, 8, "2026-01-01T00:00:00Z", 10, 13), RSSize("new", 5, 0, "2026-01-01T00:00:01Z", 10, 13)
    assert scale_sizes(15, 3, True, new, [old], 13) == {"old": 11, "new": 7}
    halves = RSSize("old", 1, 1, "2026-01-01T00:00:00Z", 2, 2), RSSize("new", 1, 0, "2026-01-01T00:00:01Z", 2, 2)
    assert scale_sizes(1, 0, True, halves[1], [halves[0]], 2) == {"old": 0}, "1/2 rounds up for both: the older takes the cut"
    assert scale_sizes(4, 1, True, RSSize("new", 0, 0, "t", 2, 3), [RSSize("old", 2, 2, "s", 2, 3)], 2) == {"old": 4}, \
        "one active ReplicaSet takes the whole new size"
    assert unschedulable_message(["Insufficient memory", "Insufficient cpu"]).startswith(
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption:")


# ---- the Deployment and ReplicaSet controllers ----

def test_deployment_creates_an_owned_replicaset_and_pods_and_reports_status(api: httpx.Client, kubectl: Kubectl) -> None:
    d = api.post(DEPLOY, json=deployment("web", replicas=2)).json()
    rs = wait_for(lambda: _items(api, RS), what="the ReplicaSet")[0]
    h = rs["metadata"]["labels"][HASH_LABEL]
    assert rs["metadata"]["name"] == f"web-{h}" and rs["spec"]["selector"]["matchLabels"] == {"app": "web", HASH_LABEL: h}
    ref = rs["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("Deployment", d["metadata"]["uid"], True)
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    pods = wait_for(lambda: len(_pods(api)) == 2 and _pods(api), what="two pods")
    for pod in pods:
        assert pod["metadata"]["name"].startswith(f"web-{h}-") and pod["metadata"]["generateName"] == f"web-{h}-"
        assert pod["metadata"]["labels"] == {"app": "web", HASH_LABEL: h}
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert pod["status"]["phase"] == "Pending"
    wait_for(lambda: all(p["spec"].get("nodeName") == "box-node" for p in _pods(api)), what="the pods to be scheduled")
    status = wait_for(lambda: _status(api).get("replicas") == 2 and _status(api), what="the Deployment's status")
    assert status["updatedReplicas"] == 2 and status["unavailableReplicas"] == 2
    assert "readyReplicas" not in status and "availableReplicas" not in status, "zero counts are omitted"
    assert _condition(status, "Available")["status"] == "False"
    assert _condition(status, "Progressing")["reason"] in ("NewReplicaSetCreated", "ReplicaSetUpdated")
    set_ready(api, _pods(api)[0])
    wait_for(lambda: _status(api).get("readyReplicas") == 1, what="one ready replica")
    _settle(api, 2)
    status = _status(api)
    assert (status["readyReplicas"], status["availableReplicas"], status["observedGeneration"]) == (2, 2, 1)
    assert "unavailableReplicas" not in status
    assert _condition(status, "Available")["reason"] == "MinimumReplicasAvailable"
    assert _condition(status, "Progressing") | {"lastUpdateTime": "", "lastTransitionTime": ""} == {
        "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
        "message": f'ReplicaSet "web-{h}" has successfully progressed.', "lastUpdateTime": "", "lastTransitionTime": ""}
    assert "successfully rolled out" in kubectl("rollout", "status", "deployment/web", "--timeout=10s").stdout
    assert f"Scaled up replica set web-{h} from 0 to 2" in kubectl("describe", "deployment", "web").stdout
    described = kubectl("describe", "pod", pods[0]["metadata"]["name"]).stdout
    assert f"Successfully assigned default/{pods[0]['metadata']['name']} to box-node" in described
    managers = {m["manager"] for m in rs["metadata"]["managedFields"]}
    assert managers == {"kube-controller-manager"}


def test_a_deleted_pod_is_recreated_and_scale_down_removes_not_ready_pods_first(api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web", replicas=3))
    first = wait_for(lambda: len(_pods(api)) == 3 and _pods(api), what="three pods")
    assert api.delete(f"{PODS}/{first[0]['metadata']['name']}").status_code == 200
    wait_for(lambda: len(_pods(api)) == 3 and first[0]["metadata"]["name"] not in {p["metadata"]["name"] for p in _pods(api)},
             what="the deleted pod to be replaced")
    pods = _pods(api)
    set_ready(api, pods[0])
    set_ready(api, pods[1], ready=False)  # Running too: only readiness tells it apart
    set_ready(api, pods[2])
    wait_for(lambda: _status(api).get("readyReplicas") == 2, what="two ready replicas")
    r = api.patch(f"{DEPLOY}/web/scale", json={"spec": {"replicas": 2}}, headers=MERGE)
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 2
    wait_for(lambda: len(_pods(api)) == 2, what="scale down to two")
    assert {p["metadata"]["name"] for p in _pods(api)} == {pods[0]["metadata"]["name"], pods[2]["metadata"]["name"]}, \
        "the not-ready pod goes first"
    rs = _items(api, RS)[0]
    wait_for(lambda: api.get(f"{RS}/{rs['metadata']['name']}").json()["status"].get("readyReplicas") == 2, what="RS status")


def test_scale_through_the_subresource_and_kubectl_scale(api: httpx.Client, kubectl: Kubectl) -> None:
    api.post(DEPLOY, json=deployment("web", replicas=1))
    wait_for(lambda: len(_pods(api)) == 1, what="one pod")
    scale = api.get(f"{DEPLOY}/web/scale").json()
    scale["spec"]["replicas"] = 3
    del scale["metadata"]["resourceVersion"]  # unconditional: the controller writes the Deployment's status meanwhile
    r = api.put(f"{DEPLOY}/web/scale", json=scale)
    assert r.status_code == 200, r.text
    wait_for(lambda: len(_pods(api)) == 3, what="three pods after PUT /scale")
    _settle(api, 3)
    assert api.get(f"{DEPLOY}/web/scale").json()["status"] == {"replicas": 3, "selector": "app=web"}
    assert "scaled" in kubectl("scale", "deployment/web", "--replicas=1").stdout
    wait_for(lambda: len(_pods(api)) == 1, what="one pod after kubectl scale")
    rs = _items(api, RS)[0]["metadata"]["name"]
    # A ReplicaSet owned by a Deployment is the Deployment's to size: scaling it directly is undone.
    kubectl("scale", f"rs/{rs}", "--replicas=4")
    wait_for(lambda: api.get(f"{RS}/{rs}").json()["spec"]["replicas"] == 1 and len(_pods(api)) == 1,
             what="the Deployment to set its ReplicaSet back")


def test_a_paused_deployment_rolls_out_nothing_until_resumed(api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web", replicas=1))
    _settle(api, 1)
    api.patch(f"{DEPLOY}/web", json={"spec": {"paused": True}}, headers=MERGE)
    _env(api, "2")
    wait_for(lambda: _status(api).get("observedGeneration") == 3, what="the paused Deployment to be observed")
    assert len(_items(api, RS)) == 1, "paused: no new ReplicaSet"
    api.patch(f"{DEPLOY}/web/scale", json={"spec": {"replicas": 2}}, headers=MERGE)
    wait_for(lambda: len(_pods(api)) == 2, what="a paused Deployment to scale all the same")
    assert len(_items(api, RS)) == 1
    api.patch(f"{DEPLOY}/web", json={"spec": {"paused": False}}, headers=MERGE)
    wait_for(lambda: len(_items(api, RS)) == 2, what="the rollout to start once resumed")
    _settle(api, 2)


def test_min_ready_seconds_delays_availability(api: httpx.Client) -> None:
    body = deployment("web", replicas=1)
    body["spec"]["minReadySeconds"] = 2
    api.post(DEPLOY, json=body)
    pod = wait_for(lambda: (p := _pods(api)) and p[0]["spec"].get("nodeName") and p[0], what="a scheduled pod")
    now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.patch(f"{PODS}/{pod['metadata']['name']}/status", json={"status": {"phase": "Running", "podIP": "10.1.1.1", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}}, headers=MERGE)
    wait_for(lambda: _status(api).get("readyReplicas") == 1, what="the ready replica")
    status = _status(api)
    ready_at = datetime.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    if time.time() < ready_at + 2:  # the seconds may have passed already on a busy machine
        assert "availableReplicas" not in status and _condition(status, "Available")["status"] == "False"
    wait_for(lambda: _status(api).get("availableReplicas") == 1, 10, "availability after minReadySeconds")
    assert time.time() >= ready_at + 2


def test_kubectl_rollout_restart_and_undo(api: httpx.Client, kubectl: Kubectl) -> None:
    api.post(DEPLOY, json=deployment("web", replicas=2))
    _settle(api, 2)
    first = _items(api, RS)[0]["metadata"]["name"]
    assert api.get(f"{DEPLOY}/web").json()["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "1"}
    kubectl("rollout", "restart", "deployment/web")
    _settle(api, 2)
    assert len(_items(api, RS)) == 2
    # undo sends the old ReplicaSet's template as a Go client writes it (resources: {}, creationTimestamp: null)
    # and patches /metadata/annotations, which the controller keeps on the Deployment.
    assert "rolled back" in kubectl("rollout", "undo", "deployment/web").stdout
    _settle(api, 2)
    rss = {rs["metadata"]["name"]: rs for rs in _items(api, RS)}
    assert len(rss) == 2 and rss[first]["spec"]["replicas"] == 2, "the first ReplicaSet is reused, not a third one made"
    assert rss[first]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert api.get(f"{DEPLOY}/web").json()["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_a_replicaset_name_taken_by_another_template_moves_the_hash_with_collision_count(api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web", replicas=1))
    _settle(api, 1)
    rs = _items(api, RS)[0]
    rs["spec"]["template"]["spec"]["containers"][0]["image"] = "edited:by-hand"  # its name no longer matches its template
    rs["spec"]["replicas"] = 0
    del rs["metadata"]["resourceVersion"]
    assert api.put(f"{RS}/{rs['metadata']['name']}", json=rs).status_code == 200
    wait_for(lambda: _status(api).get("collisionCount") == 1, what="the collision to be counted")
    _settle(api, 1)
    assert len(_items(api, RS)) == 2


def test_resizing_in_the_middle_of_a_rollout_scales_old_and_new_replicasets_proportionally(api: httpx.Client) -> None:
    """Kubernetes' documented example: 10 replicas, maxSurge 3, maxUnavailable 2, a rollout stuck on
    pods that never become ready, then scaled to 15: 3 more to the old ReplicaSet, 2 to the new."""
    body = deployment("web", replicas=10)
    body["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}
    api.post(DEPLOY, json=body)
    _settle(api, 10)
    old = _items(api, RS)[0]["metadata"]["name"]
    _env(api, "stuck")  # its pods are never reported ready

    def sizes() -> dict[str, int]:
        return {rs["metadata"]["name"]: rs["spec"]["replicas"] for rs in _items(api, RS)}
    wait_for(lambda: len(sizes()) == 2 and sizes()[old] == 8 and sum(sizes().values()) == 13, what="the rollout to stall at 8 + 5")
    new = next(n for n in sizes() if n != old)
    api.patch(f"{DEPLOY}/web/scale", json={"spec": {"replicas": 15}}, headers=MERGE)
    wait_for(lambda: sizes() == {old: 11, new: 7}, what="15 + maxSurge spread over both ReplicaSets")
    api.patch(f"{DEPLOY}/web/scale", json={"spec": {"replicas": 5}}, headers=MERGE)
    wait_for(lambda: sizes() == {old: 5, new: 3}, what="5 + maxSurge, taken from both in proportion")


def _replay_pods(box: ClusterBox, since: int) -> Iterator[dict[str, dict[str, Any]]]:
    """Every state the store went through for pods after resourceVersion `since`, in order."""
    live: dict[str, dict[str, Any]] = {}
    for ev in box.server.call(lambda: list(box.server.history)):
        if ev.key != ("", "pods"):
            continue
        name = ev.obj["metadata"]["name"]
        if ev.type == "DELETED" or ev.obj["metadata"].get("deletionTimestamp"):
            live.pop(name, None)
        else:
            live[name] = ev.obj
        if ev.rv > since:
            yield dict(live)


def test_rolling_update_with_max_unavailable_0_never_drops_below_the_desired_ready_pods(api: httpx.Client, box: ClusterBox) -> None:
    body = deployment("web", replicas=3)
    body["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    api.post(DEPLOY, json=body)
    _settle(api, 3)
    old_rs = _items(api, RS)[0]["metadata"]["name"]
    since = int(api.get(f"{DEPLOY}/web").json()["metadata"]["resourceVersion"])
    _env(api, "2")
    _settle(api, 3, timeout=20)
    states = list(_replay_pods(box, since))
    assert states, "the rollout went through pod states"
    for state in states:
        assert sum(1 for p in state.values() if _ready(p)) >= 3, "maxUnavailable 0: never fewer ready pods than desired"
        assert len(state) <= 4, "maxSurge 1: never more than desired + 1 pods"
    rss = {rs["metadata"]["name"]: rs for rs in _items(api, RS)}
    assert rss[old_rs]["spec"]["replicas"] == 0 and len(rss) == 2
    new_rs = next(n for n in rss if n != old_rs)
    assert rss[new_rs]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert {p["metadata"]["labels"][HASH_LABEL] for p in _pods(api)} == {rss[new_rs]["metadata"]["labels"][HASH_LABEL]}
    assert _status(api)["observedGeneration"] == 2
    # Back to the first template (a rollback): its ReplicaSet is reused and becomes revision 3.
    r = api.patch(f"{DEPLOY}/web", json=[{"op": "remove", "path": "/spec/template/spec/containers/0/env"}],
                  headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    _settle(api, 3)
    rss = {rs["metadata"]["name"]: rs for rs in _items(api, RS)}
    assert set(rss) == {old_rs, new_rs} and rss[old_rs]["spec"]["replicas"] == 3 and rss[new_rs]["spec"]["replicas"] == 0
    assert rss[old_rs]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_recreate_starts_no_new_pod_while_an_old_one_runs_and_history_is_limited(api: httpx.Client, box: ClusterBox) -> None:
    body = deployment("web", replicas=2)
    body["spec"] |= {"strategy": {"type": "Recreate"}, "revisionHistoryLimit": 1}
    api.post(DEPLOY, json=body)
    _settle(api, 2)
    old = _pods(api)
    for pod in old:  # hold them as a kubelet does while containers stop
        api.patch(f"{PODS}/{pod['metadata']['name']}", json={"metadata": {"finalizers": ["test/hold"]}}, headers=MERGE)
    _env(api, "2")
    wait_for(lambda: all(p["metadata"].get("deletionTimestamp") for p in _items(api, PODS)), what="the old pods to be deleted")
    box.server.call(box.controllers.sync)  # one more pass, now that the old pods are terminating
    assert len(_items(api, RS)) == 1 and len(_items(api, PODS)) == 2, "Recreate: no new ReplicaSet while old pods run"
    for pod in old:
        api.patch(f"{PODS}/{pod['metadata']['name']}", json={"metadata": {"finalizers": None}}, headers=MERGE)
    _settle(api, 2)
    assert not {p["metadata"]["name"] for p in _pods(api)} & {p["metadata"]["name"] for p in old}
    _env(api, "3")
    _settle(api, 2)
    wait_for(lambda: len(_items(api, RS)) == 2, what="revisionHistoryLimit 1 to leave the new ReplicaSet and one old")
    revisions = sorted(int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for rs in _items(api, RS))
    assert revisions == [2, 3]


def test_progress_deadline_exceeded_when_pods_never_become_ready(api: httpx.Client, kubectl: Kubectl) -> None:
    body = deployment("web", replicas=1)
    body["spec"]["progressDeadlineSeconds"] = 1
    api.post(DEPLOY, json=body)
    wait_for(lambda: _condition(_status(api), "Progressing").get("reason") == "ProgressDeadlineExceeded", 15,
             "the progress deadline to pass")
    cond = _condition(_status(api), "Progressing")
    assert cond["status"] == "False" and cond["message"].endswith("has timed out progressing.")
    out = kubectl("rollout", "status", "deployment/web", "--timeout=10s", check=False)
    assert out.returncode != 0 and "exceeded its progress deadline" in out.stderr
    _settle(api, 1)
    assert _condition(_status(api), "Progressing")["status"] == "True"


def test_deleting_a_deployment_in_the_foreground_or_background_removes_its_replicasets_and_pods(api: httpx.Client) -> None:
    for policy in ("Foreground", "Background"):
        api.post(DEPLOY, json=deployment("web", replicas=2))
        wait_for(lambda: len(_pods(api)) == 2, what="two pods")
        r = api.request("DELETE", f"{DEPLOY}/web", json={"propagationPolicy": policy})
        assert r.status_code == 200
        if policy == "Foreground":
            assert "foregroundDeletion" in r.json()["metadata"]["finalizers"]
        wait_for(lambda: api.get(f"{DEPLOY}/web").status_code == 404 and not _items(api, RS) and not _items(api, PODS),
                 what=f"{policy} deletion to remove the Deployment, its ReplicaSet and pods")


# ---- the scheduler ----

def test_pods_whose_requests_do_not_fit_the_node_stay_pending_until_room_is_made(small_box: ClusterBox) -> None:
    with small_box.client() as api:
        node = api.get(f"/api/v1/nodes/{small_box.node_name}").json()
        assert node["status"]["allocatable"]["cpu"] == "1" and node["status"]["allocatable"]["memory"] == "1Gi"
        hog = {"metadata": {"name": "hog"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "600m"}}}]}}
        assert api.post(PODS, json=hog).status_code == 201
        wait_for(lambda: api.get(f"{PODS}/hog").json()["spec"].get("nodeName") == "box-node", what="the hog to be bound")
        body = deployment("web", replicas=1)
        body["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "500m", "memory": "256Mi"}}
        api.post(DEPLOY, json=body)

        def unschedulable() -> dict[str, Any] | None:
            pods = _pods(api, labelSelector="app=web")
            cond = pods and _condition(pods[0]["status"], "PodScheduled")
            return cond if cond and cond.get("reason") == "Unschedulable" else None
        cond = wait_for(unschedulable, what="the pod to be unschedulable")
        assert cond["status"] == "False" and cond["message"].startswith("0/1 nodes are available: 1 Insufficient cpu.")
        name = _pods(api, labelSelector="app=web")[0]["metadata"]["name"]
        events = _items(api, "/api/v1/namespaces/default/events", fieldSelector=f"involvedObject.name={name}")
        assert [(e["type"], e["reason"], e["message"]) for e in events] == [("Warning", "FailedScheduling", cond["message"])]
        pod = _pods(api, labelSelector="app=web")[0]
        assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]
        big = {"metadata": {"name": "big"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"memory": "2Gi"}}}]}}
        api.post(PODS, json=big)
        wait_for(lambda: "Insufficient memory" in _condition(api.get(f"{PODS}/big").json()["status"], "PodScheduled").get("message", ""),
                 what="the memory-hungry pod to be refused")
        assert api.delete(f"{PODS}/hog").status_code == 200
        wait_for(lambda: _pods(api, labelSelector="app=web")[0]["spec"].get("nodeName") == "box-node",
                 what="the pending pod to be scheduled once the hog is gone")
        bound = _pods(api, labelSelector="app=web")[0]
        assert _condition(bound["status"], "PodScheduled")["status"] == "True"
        assert "nodeName" not in api.get(f"{PODS}/big").json()["spec"], "2Gi never fits a 1Gi node"


# ---- the EndpointSlice controller ----

def test_endpoint_slices_follow_pod_readiness_and_resolve_named_ports(api: httpx.Client) -> None:
    body = deployment("web", replicas=2)
    body["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    api.post(DEPLOY, json=body)
    svc = {"metadata": {"name": "web", "labels": {"team": "search"}},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "api", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}
    assert api.post("/api/v1/namespaces/default/services", json=svc).status_code == 201

    def the_slice() -> dict[str, Any]:
        slices = _items(api, SLICES, labelSelector="kubernetes.io/service-name=web")
        assert len(slices) == 1, slices
        return slices[0]
    empty = wait_for(lambda: _items(api, SLICES) and the_slice(), what="the placeholder slice")
    assert empty["endpoints"] == [] and empty["addressType"] == "IPv4"
    assert empty["metadata"]["labels"] == {"team": "search", "kubernetes.io/service-name": "web",
                                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert empty["metadata"]["ownerReferences"][0]["kind"] == "Service"
    a, b = wait_for(lambda: len(_pods(api)) == 2 and _pods(api), what="two pods")
    set_ready(api, a)
    set_ready(api, b, ready=False)

    def endpoints() -> dict[str, tuple[str, bool]]:
        return {e["targetRef"]["name"]: (e["addresses"][0], e["conditions"]["ready"]) for e in the_slice()["endpoints"]}
    wait_for(lambda: len(endpoints()) == 2, what="both pods in the slice")
    got = endpoints()
    assert got[a["metadata"]["name"]][1] is True and got[b["metadata"]["name"]][1] is False
    assert the_slice()["ports"] == [{"name": "api", "port": 8080, "protocol": "TCP"}], "targetPort 'http' resolved to 8080"
    set_ready(api, api.get(f"{PODS}/{b['metadata']['name']}").json())
    wait_for(lambda: all(ready for _, ready in endpoints().values()), what="the second endpoint to turn ready")
    api.delete(f"{PODS}/{a['metadata']['name']}")
    wait_for(lambda: a["metadata"]["name"] not in endpoints(), what="the deleted pod to leave the slice")
    assert list(endpoints()) == [b["metadata"]["name"]], "the replacement pod has no IP yet: not an endpoint"
    assert api.delete("/api/v1/namespaces/default/services/web").status_code == 200
    wait_for(lambda: not _items(api, SLICES), what="the slice to be collected with its Service")



# ---- with the kubelet: real processes behind the Deployment and the Service ----

@pytest.mark.slow
def test_a_deployment_served_by_kubelet_pods_rolls_out_and_its_slice_routes_real_traffic() -> None:
    import sys
    from pathlib import Path

    server = "import http.server, os; http.server.HTTPServer(('', 8080), http.server.SimpleHTTPRequestHandler).serve_forever()"
    body = deployment("web", image="box/python", replicas=2)
    body["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    body["spec"]["template"]["spec"] = {"terminationGracePeriodSeconds": 2, "containers": [{
        "name": "main", "image": "box/python", "command": ["python", "-c", server], "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}
    with ClusterBox(kubelet=True, images={"box/python": Path(sys.executable).parent}) as b, b.client() as api:
        api.post(DEPLOY, json=body)
        api.post("/api/v1/namespaces/default/services", json={"metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
        wait_for(lambda: _rolled_out(api, 2), 60, "the kubelet's pods to become ready")
        _env(api, "2")
        wait_for(lambda: _rolled_out(api, 2), 60, "the rolling update on real pods")
        hashes = {p["metadata"]["labels"][HASH_LABEL] for p in _pods(api)}

        def ready_endpoints() -> list[str]:
            slices = _items(api, SLICES, labelSelector="kubernetes.io/service-name=web")
            return [e["addresses"][0] for s in slices for e in s["endpoints"] if e["conditions"]["ready"]
                    and e["targetRef"]["name"] in {p["metadata"]["name"] for p in _pods(api)}]
        ips = wait_for(lambda: len(ready_endpoints()) == 2 and ready_endpoints(), 30, "two ready endpoints of the new pods")
        assert len(hashes) == 1 and len(set(ips)) == 2
        port = _items(api, SLICES, labelSelector="kubernetes.io/service-name=web")[0]["ports"][0]["port"]
        for ip in ips:
            assert httpx.get(f"http://{ip}:{port}/", timeout=10).status_code == 200
