"""The box's controllers: what kube-controller-manager and kube-scheduler do for the kinds
Infernetes depends on — Deployment -> ReplicaSet -> Pods with rolling updates, the scheduler
binding pods to the box's one Node, and EndpointSlices for Services.

They run as one asyncio task on the box's loop, woken by the store's events (and by a timer for
progress deadlines and minReadySeconds), and write through the server's admission path as a
system user, so every write gets a resourceVersion, managedFields and watch events like any
other. They only read pod status; whoever runs pods (the kubelet, or a test writing the status
subresource) decides readiness. The decisions are plain functions (`rollout_replicas`,
`scale_down_old`, `pods_to_delete`, `fits`, `slice_groups`) so that they read as the real
controllers' code does; the `Controllers` class only observes and writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import hashlib
import json
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from .rbac import User
from .resources import Resource
from .selection import label_selector, selector_string
from .server import ApiError, ApiServer, Event, Request

log = logging.getLogger(__name__)

NODE_NAME = "box-node"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
SYSTEM = User("system:kube-controller-manager", ("system:masters", "system:authenticated"))
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
SLICE_MANAGER = "endpointslice-controller.k8s.io"
_WATCHED = {("apps", "deployments"), ("apps", "replicasets"), ("", "pods"), ("", "services"), ("", "nodes")}
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery rand.SafeEncodeString's alphabet


# ---- pure decisions ----

def template_hash(template: dict[str, Any], collision_count: int = 0) -> str:
    """A stable name suffix for a pod template (the real one is fnv32a over the spewed struct)."""
    digest = hashlib.sha256(json.dumps([template, collision_count], sort_keys=True).encode()).digest()
    n = int.from_bytes(digest[:8], "big")
    out = ""
    for _ in range(10):
        n, r = divmod(n, len(_SAFE))
        out += _SAFE[r]
    return out


def scaled_value(value: Any, total: int, round_up: bool, default: str) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int, or a percentage of `total`."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        pct = Decimal(value[:-1]) * total / 100
        return int(math.ceil(pct) if round_up else math.floor(pct))
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"invalid value for IntOrString: {value!r}")


def surge_and_unavailable(spec: dict[str, Any], desired: int) -> tuple[int, int]:
    """ResolveFenceposts plus MaxUnavailable's clamp: maxSurge rounds up, maxUnavailable down, and
    both at 0 means maxUnavailable 1 (a rollout must be able to move)."""
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = scaled_value(rolling.get("maxSurge"), desired, True, "25%")
    unavailable = scaled_value(rolling.get("maxUnavailable"), desired, False, "25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1
    if desired == 0:
        unavailable = 0
    return surge, min(unavailable, desired)


@dataclass(frozen=True)
class RSView:
    """What the rollout decisions need of one ReplicaSet."""
    name: str
    replicas: int  # spec
    available: int  # status


def rollout_replicas(desired: int, surge: int, new: RSView, olds: Iterable[RSView]) -> int:
    """NewRSNewReplicas for RollingUpdate: grow the new ReplicaSet as far as maxSurge allows."""
    if new.replicas > desired:
        return desired
    current = new.replicas + sum(o.replicas for o in olds)
    max_total = desired + surge
    if current >= max_total:
        return new.replicas
    return new.replicas + min(max_total - current, desired - new.replicas)


def scale_down_old(desired: int, max_unavailable: int, new: RSView, olds: list[RSView]) -> dict[str, int]:
    """reconcileOldReplicaSets: old ReplicaSets (oldest first) shrink only as far as keeping
    `desired - maxUnavailable` pods available allows; unhealthy old replicas go first."""
    olds = list(olds)
    if sum(o.replicas for o in olds) == 0:
        return {}
    all_pods = new.replicas + sum(o.replicas for o in olds)
    min_available = desired - max_unavailable
    new_unavailable = new.replicas - new.available
    max_scaled_down = all_pods - min_available - new_unavailable
    if max_scaled_down <= 0:
        return {}
    out: dict[str, int] = {}
    cleaned = 0
    for i, o in enumerate(olds):  # cleanupUnhealthyReplicas
        if cleaned >= max_scaled_down:
            break
        if o.replicas == o.available:
            continue
        down = min(max_scaled_down - cleaned, o.replicas - o.available)
        cleaned += down
        olds[i] = RSView(o.name, o.replicas - down, o.available)
        out[o.name] = o.replicas - down
    available = new.available + sum(o.available for o in olds)
    if available <= min_available:
        return out
    budget, scaled = available - min_available, 0
    for o in olds:  # scaleDownOldReplicaSetsForRollingUpdate
        if scaled >= budget:
            break
        if o.replicas == 0:
            continue
        down = min(o.replicas, budget - scaled)
        scaled += down
        out[o.name] = o.replicas - down
    return out


@dataclass(frozen=True)
class RSSize:
    """What scaling a Deployment proportionally needs of one ReplicaSet."""
    name: str
    replicas: int
    available: int
    created: str
    desired_annotation: int | None  # deployment.kubernetes.io/desired-replicas
    max_annotation: int | None  # deployment.kubernetes.io/max-replicas


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def scale_sizes(desired: int, surge: int, rolling: bool, new: RSSize | None, olds: list[RSSize],
                status_replicas: int) -> dict[str, int]:
    """The Deployment controller's scale(): a Deployment resized (or paused) outside a rollout.
    One active ReplicaSet (or none: the newest) takes the new size; a saturated new one retires the
    old ones; otherwise, during a rolling update, the change is spread over the active ReplicaSets
    in proportion to their sizes (the largest takes the rounding leftover). {name: replicas}."""
    everything = ([new] if new is not None else []) + olds
    active = [r for r in everything if r.replicas > 0]
    if len(active) <= 1:
        target = active[0] if active else (new if new is not None else max(olds, key=lambda r: r.created, default=None))
        return {target.name: desired} if target is not None and target.replicas != desired else {}
    if new is not None and new.replicas == desired and new.desired_annotation == desired and new.available == desired:
        return {o.name: 0 for o in olds if o.replicas > 0}
    if not rolling:
        return {}
    allowed = desired + surge if desired > 0 else 0
    to_add = allowed - sum(r.replicas for r in active)
    if to_add > 0:  # ReplicaSetsBySizeNewer
        active.sort(key=lambda r: r.created, reverse=True)
        active.sort(key=lambda r: r.replicas, reverse=True)
    elif to_add < 0:  # ReplicaSetsBySizeOlder
        active.sort(key=lambda r: r.created)
        active.sort(key=lambda r: r.replicas, reverse=True)
    sizes, added = {}, 0
    for r in active:
        part = 0
        if to_add != 0 and to_add != added:
            if desired == 0:
                fraction = -r.replicas
            else:
                annotated = r.max_annotation if r.max_annotation is not None else status_replicas
                fraction = _round_half_away(r.replicas * (desired + surge) / annotated) - r.replicas if annotated else 0
            part = min(fraction, to_add - added) if to_add > 0 else max(fraction, to_add - added)
        sizes[r.name] = r.replicas + part
        added += part
    if to_add != 0:
        sizes[active[0].name] = max(0, sizes[active[0].name] + to_add - added)
    return {name: size for name, size in sizes.items() if size != next(r.replicas for r in active if r.name == name)}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c.get("type") == type_), None)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def _format_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_ready(pod: dict[str, Any]) -> bool:
    c = _condition(pod, "Ready")
    return bool(c and c.get("status") == "True")


def pod_available(pod: dict[str, Any], min_ready_seconds: int, now: float) -> bool:
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    since = _parse_time(_condition(pod, "Ready").get("lastTransitionTime"))  # type: ignore[union-attr]
    return since is not None and since + min_ready_seconds <= now


def pod_active(pod: dict[str, Any]) -> bool:
    """controller.IsPodActive: not terminal and not being deleted."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not pod["metadata"].get("deletionTimestamp")


def pods_to_delete(pods: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """ActivePodsWithRanks, simplified: unscheduled before scheduled, Pending before Running,
    not ready before ready, more recently ready first, more restarts first, newer first."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}

    def key(pod: dict[str, Any]) -> tuple[Any, ...]:
        status = pod.get("status") or {}
        ready = pod_ready(pod)
        ready_since = _parse_time((_condition(pod, "Ready") or {}).get("lastTransitionTime")) or 0.0
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or ())
        created = _parse_time(pod["metadata"].get("creationTimestamp")) or 0.0
        return (bool((pod.get("spec") or {}).get("nodeName")), phase_rank.get(status.get("phase", "Pending"), 0), ready,
                -ready_since if ready else 0.0, -restarts, -created, pod["metadata"]["name"])
    return sorted(pods, key=key)[:max(count, 0)]


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """The scheduler's view of a pod's size: the sum of its containers' requests (limits where no
    request is set, as the API server defaults them), or the largest init container if larger."""
    def one(container: dict[str, Any]) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: Decimal(parse_quantity(v)) for k, v in merged.items() if k in ("cpu", "memory")}
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for c in spec.get("containers") or ():
        for k, v in one(c).items():
            total[k] = total.get(k, Decimal(0)) + v
    for c in spec.get("initContainers") or ():
        for k, v in one(c).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    return total


def fits(pod: dict[str, Any], node: dict[str, Any], bound: list[dict[str, Any]]) -> list[str]:
    """Why the pod does not fit the node (empty: it fits), in the scheduler's words."""
    labels = node["metadata"].get("labels") or {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return ["node(s) didn't match Pod's node affinity/selector"]
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    reasons = []
    if len(bound) + 1 > int(allocatable.get("pods", "110")):
        reasons.append("Too many pods")
    want = pod_requests(pod)
    for resource in ("cpu", "memory"):
        if want.get(resource, 0) == 0 or resource not in allocatable:
            continue
        used = sum((pod_requests(p).get(resource, Decimal(0)) for p in bound), Decimal(0))
        if used + want[resource] > Decimal(parse_quantity(allocatable[resource])):
            reasons.append(f"Insufficient {resource}")
    return reasons


def unschedulable_message(reasons: list[str]) -> str:
    counted = ", ".join(f"1 {r}" for r in sorted(reasons))
    tail = ("1 Preemption is not helpful for scheduling." if any("didn't match" in r for r in reasons)
            else "1 No preemption victims found for incoming pod.")
    return f"0/1 nodes are available: {counted}. preemption: 0/1 nodes are available: {tail}"


def _find_port(pod: dict[str, Any], target: Any, protocol: str) -> int | None:
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or ():
        for p in c.get("ports") or ():
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                return int(p["containerPort"])
    return None


def slice_groups(service: dict[str, Any], pods: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """The endpoints of a Service grouped by their resolved ports (a named targetPort can resolve
    differently per pod, and one slice carries one port set): [(ports, endpoints)]."""
    spec = service.get("spec") or {}
    groups: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports = []
        for sp in spec.get("ports") or ():
            protocol = sp.get("protocol", "TCP")
            number = _find_port(pod, sp.get("targetPort", sp.get("port")), protocol)
            if number is None:
                continue
            port = {"name": sp.get("name", ""), "port": number, "protocol": protocol}
            if sp.get("appProtocol"):
                port["appProtocol"] = sp["appProtocol"]
            ports.append(port)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ready = pod_ready(pod)
        endpoint = {"addresses": [status["podIP"]],
                    "conditions": {"ready": (ready or bool(spec.get("publishNotReadyAddresses"))) and not terminating,
                                   "serving": ready, "terminating": terminating},
                    "targetRef": {"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]}}
        if (pod.get("spec") or {}).get("nodeName"):
            endpoint["nodeName"] = pod["spec"]["nodeName"]
        key = json.dumps(ports, sort_keys=True)
        groups.setdefault(key, (ports, []))[1].append(endpoint)
    return list(groups.values())


# ---- the controllers ----

def _owner_ref(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _controlled_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"]["uid"]
    return any(r.get("uid") == uid and r.get("controller") for r in obj["metadata"].get("ownerReferences") or ())


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template as EqualIgnoreHash compares it: without the hash label, and with empty and
    null fields dropped (a Go client such as `kubectl rollout undo` sends `resources: {}` and
    `creationTimestamp: null`, which the real server's decoding makes equal to absent)."""
    t = copy.deepcopy(template)
    labels = (t.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return _drop_empty(t)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _revision(rs: dict[str, Any]) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _set_condition(status: dict[str, Any], cond: dict[str, Any], keep_transition: bool = True) -> None:
    """SetDeploymentCondition: same status and reason change nothing; a new status moves lastTransitionTime."""
    conds = status.setdefault("conditions", [])
    cur = next((c for c in conds if c["type"] == cond["type"]), None)
    if cur is not None and cur["status"] == cond["status"] and cur.get("reason") == cond.get("reason"):
        return
    if cur is not None and cur["status"] == cond["status"] and keep_transition:
        cond = {**cond, "lastTransitionTime": cur.get("lastTransitionTime", cond["lastTransitionTime"])}
    status["conditions"] = [c for c in conds if c["type"] != cond["type"]] + [cond]
    order = {"Available": 0, "Progressing": 1, "ReplicaFailure": 2}
    status["conditions"].sort(key=lambda c: order.get(c["type"], 9))


class Controllers:
    """Deployment, ReplicaSet, scheduler and EndpointSlice controllers over one ApiServer."""

    def __init__(self, server: ApiServer, node_name: str = NODE_NAME, cpu: str = "2", memory: str = "8Gi", pods: int = 110):
        self.s = server
        self.node_name = node_name
        self.capacity = {"cpu": str(cpu), "memory": str(memory), "pods": str(pods)}
        self._wake: asyncio.Event | None = None
        self._due: float | None = None  # wall-clock time of the next timed check (progress deadline, minReadySeconds)

    # ---- running ----

    async def run(self) -> None:
        self._wake = asyncio.Event()
        self.s.listeners.append(self._on_event)
        self._ensure_node()
        self._wake.set()
        try:
            while True:
                timeout = None if self._due is None else max(0.05, self._due - self._now())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                self._wake.clear()
                await asyncio.sleep(0.01)  # let a burst of writes land before one pass
                try:
                    self.sync()
                except Exception:  # noqa: BLE001 - the controllers must outlive one bad object
                    log.exception("controller pass failed")
        finally:
            self.s.listeners.remove(self._on_event)

    def _on_event(self, ev: Event) -> None:
        if ev.key in _WATCHED and self._wake is not None:
            self._wake.set()

    @staticmethod
    def _now() -> float:
        return datetime.datetime.now(tz=datetime.UTC).timestamp()

    def sync(self) -> None:
        """One level-triggered pass over everything; writes only what differs."""
        self._due = None
        for d in self._objects("apps", "deployments"):
            self._guard(self.sync_deployment, d)
        for rs in self._objects("apps", "replicasets"):
            self._guard(self.sync_replicaset, rs)
        self._guard(self.schedule)
        for svc in self._objects("", "services"):
            self._guard(self.sync_endpoint_slices, svc)

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ApiError as exc:  # e.g. the namespace is terminating: the next pass retries
            log.debug("controller write refused: %s", exc.message)

    def _due_at(self, ts: float) -> None:
        self._due = ts if self._due is None else min(self._due, ts)

    # ---- store access (as the system, through admission) ----

    def _res(self, group: str, plural: str) -> Resource:
        return self.s.by_plural(group, plural)

    def _objects(self, group: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        items = list(self.s.objects[(group, plural)].values())
        if namespace is not None:
            items = [o for o in items if o["metadata"].get("namespace") == namespace]
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def _create(self, group: str, plural: str, namespace: str | None, obj: dict[str, Any], manager: str = CONTROLLER_MANAGER) -> dict[str, Any]:
        res = self._res(group, plural)
        stored, _ = self.s.admit(Request(res, namespace, None, None, "create", SYSTEM, manager), None, obj, manager, False)
        return stored

    def _update(self, group: str, plural: str, old: dict[str, Any], new: dict[str, Any], subresource: str | None = None,
                manager: str = CONTROLLER_MANAGER) -> dict[str, Any]:
        res = self._res(group, plural)
        meta = old["metadata"]
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = meta["resourceVersion"]
        rq = Request(res, meta.get("namespace"), meta["name"], subresource, "update", SYSTEM, manager)
        stored, _ = self.s.admit(rq, old, new, manager, False)
        return stored

    def _write_status(self, group: str, plural: str, obj: dict[str, Any], status: dict[str, Any],
                      manager: str = CONTROLLER_MANAGER) -> dict[str, Any]:
        if (obj.get("status") or {}) == status:
            return obj
        return self._update(group, plural, obj, {**obj, "status": status}, "status", manager)

    def _delete(self, group: str, plural: str, obj: dict[str, Any]) -> None:
        current = self.s.get(self._res(group, plural), obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if current is not None and not current["metadata"].get("deletionTimestamp"):
            self.s._delete_object(self._res(group, plural), current, "Background")

    def _event(self, obj: dict[str, Any], reason: str, message: str, component: str, type_: str = "Normal") -> None:
        """An Event about `obj`, as the real components record them (`kubectl describe` shows them)."""
        meta = obj["metadata"]
        now = _format_time(self._now())
        involved = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "namespace": meta.get("namespace"),
                    "name": meta["name"], "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion")}
        self._create("", "events", meta.get("namespace") or "default", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta.get("namespace") or "default"},
            "involvedObject": involved, "reason": reason, "message": message, "type": type_, "count": 1,
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": "",
            "firstTimestamp": now, "lastTimestamp": now}, component)

    # ---- node ----

    def _ensure_node(self) -> None:
        if self.s.get(self._res("", "nodes"), None, self.node_name) is not None:
            return
        node = self._create("", "nodes", None, {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                                                            "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": ""}},
            "spec": {}})
        now = _format_time(self._now())
        self._write_status("", "nodes", node, {
            "capacity": dict(self.capacity), "allocatable": dict(self.capacity),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.32.0", "containerRuntimeVersion": "clusterbox://1",
                         "kernelVersion": "", "osImage": "clusterbox", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""}}, "kubelet")

    # ---- Deployment controller ----

    def sync_deployment(self, d: dict[str, Any]) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return  # the garbage collector takes its ReplicaSets
        rss = [rs for rs in self._objects("apps", "replicasets", meta["namespace"]) if _controlled_by(rs, d)]
        template = spec.get("template") or {}
        new_rs = next((rs for rs in rss if _without_hash((rs.get("spec") or {}).get("template") or {}) == _without_hash(template)), None)
        olds = sorted((rs for rs in rss if rs is not new_rs), key=lambda rs: (rs["metadata"]["creationTimestamp"], _revision(rs)))
        status = copy.deepcopy(d.get("status") or {})
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        if spec.get("paused") or self._scaling_event(d, new_rs, olds):
            # sync(): resize what exists, create nothing, estimate no progress.
            if new_rs is not None:
                new_rs = self._adopt_revision(new_rs, olds, d, status)
            new_rs, olds = self._scale(d, new_rs, olds, not recreate)
            if spec.get("paused"):
                self._cleanup(d, [rs for rs in olds if self._fresh(rs)])
            rollout = False
        else:
            if recreate:
                new_rs, olds, status = self._recreate(d, new_rs, olds, status)
            else:
                new_rs, olds, status = self._rolling(d, new_rs, olds, status)
            self._cleanup(d, [rs for rs in olds if self._fresh(rs)])
            rollout = True
        if new_rs is not None:
            d = self._sync_revision(d, self._fresh(new_rs))
        self._deployment_status(d, new_rs, olds, status, rollout)

    @staticmethod
    def _size(rs: dict[str, Any]) -> RSSize:
        annotations = rs["metadata"].get("annotations") or {}

        def number(key: str) -> int | None:
            value = annotations.get(key)
            return int(value) if value is not None and str(value).isdigit() else None
        return RSSize(rs["metadata"]["name"], int(rs["spec"].get("replicas", 1)), int((rs.get("status") or {}).get("availableReplicas", 0)),
                      rs["metadata"]["creationTimestamp"], number("deployment.kubernetes.io/desired-replicas"),
                      number("deployment.kubernetes.io/max-replicas"))

    def _scaling_event(self, d: dict[str, Any], new_rs: dict[str, Any] | None, olds: list[dict[str, Any]]) -> bool:
        """isScalingEvent: an active ReplicaSet was sized for another replica count than the Deployment's."""
        desired = int(d["spec"].get("replicas", 1))
        return any(r.replicas > 0 and r.desired_annotation is not None and r.desired_annotation != desired
                   for r in map(self._size, ([new_rs] if new_rs is not None else []) + olds))

    def _scale(self, d: dict[str, Any], new_rs: dict[str, Any] | None, olds: list[dict[str, Any]],
               rolling: bool) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        desired = int(d["spec"].get("replicas", 1))
        surge, _ = surge_and_unavailable(d["spec"], desired)
        sizes = scale_sizes(desired, surge, rolling, self._size(new_rs) if new_rs is not None else None,
                            [self._size(rs) for rs in olds], int((d.get("status") or {}).get("replicas", 0)))
        resize = lambda rs: self._scale_rs(rs, sizes[rs["metadata"]["name"]], d) if rs["metadata"]["name"] in sizes else rs  # noqa: E731
        return (resize(new_rs) if new_rs is not None else None), [resize(rs) for rs in olds]

    def _sync_revision(self, d: dict[str, Any], new_rs: dict[str, Any]) -> dict[str, Any]:
        """The Deployment carries its newest ReplicaSet's revision annotation (`kubectl rollout
        undo` patches /metadata/annotations and expects them there)."""
        revision = str(_revision(new_rs))
        annotations = d["metadata"].get("annotations") or {}
        if annotations.get(REVISION) == revision:
            return d
        new = copy.deepcopy(d)
        new["metadata"]["annotations"] = {**annotations, REVISION: revision}
        return self._update("apps", "deployments", d, new)

    def _fresh(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored version of an object written earlier in this pass."""
        res = self._res("apps", "replicasets")
        return self.s.get(res, obj["metadata"]["namespace"], obj["metadata"]["name"]) or obj

    def _new_replicaset(self, d: dict[str, Any], olds: list[dict[str, Any]], replicas: int,
                        status: dict[str, Any]) -> dict[str, Any]:
        spec = d["spec"]
        template = copy.deepcopy(spec.get("template") or {})
        collisions = int((d.get("status") or {}).get("collisionCount", 0))
        while True:  # a name taken by a ReplicaSet of another template: status.collisionCount moves the hash
            h = template_hash(_drop_empty(template), collisions)
            if self.s.get(self._res("apps", "replicasets"), d["metadata"]["namespace"], f"{d['metadata']['name']}-{h}") is None:
                break
            collisions += 1
        if collisions:
            status["collisionCount"] = collisions
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), HASH_LABEL: h}
        selector = copy.deepcopy(spec.get("selector") or {})
        selector["matchLabels"] = {**(selector.get("matchLabels") or {}), HASH_LABEL: h}
        revision = max([_revision(rs) for rs in olds] + [0]) + 1
        desired = int(spec.get("replicas", 1))
        name = f"{d['metadata']['name']}-{h}"
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
              "metadata": {"name": name, "namespace": d["metadata"]["namespace"], "labels": tmeta["labels"],
                           "annotations": {REVISION: str(revision), "deployment.kubernetes.io/desired-replicas": str(desired),
                                           "deployment.kubernetes.io/max-replicas": str(desired + surge_and_unavailable(spec, desired)[0])},
                           "ownerReferences": [_owner_ref(d, "apps/v1", "Deployment")]},
              "spec": {"replicas": replicas, "minReadySeconds": int(spec.get("minReadySeconds", 0)), "selector": selector,
                       "template": template}}
        created = self._create("apps", "replicasets", d["metadata"]["namespace"], rs)
        self._event(d, "ScalingReplicaSet", f"Scaled up replica set {name} from 0 to {replicas}", "deployment-controller")
        if self._has_deadline(d):
            now = _format_time(self._now())
            _set_condition(status, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated",
                                    "message": f'Created new replica set "{name}"', "lastUpdateTime": now, "lastTransitionTime": now})
        return created

    def _scale_rs(self, rs: dict[str, Any], replicas: int, d: dict[str, Any]) -> dict[str, Any]:
        rs = self._fresh(rs)
        spec = d["spec"]
        desired = int(spec.get("replicas", 1))
        annotations = {**(rs["metadata"].get("annotations") or {}), "deployment.kubernetes.io/desired-replicas": str(desired),
                       "deployment.kubernetes.io/max-replicas": str(desired + surge_and_unavailable(spec, desired)[0])}
        if int(rs["spec"].get("replicas", 1)) == replicas and annotations == (rs["metadata"].get("annotations") or {}):
            return rs
        new = copy.deepcopy(rs)
        before = int(rs["spec"].get("replicas", 1))
        new["spec"]["replicas"] = replicas
        new["metadata"]["annotations"] = annotations
        if before != replicas:
            self._event(d, "ScalingReplicaSet", f"Scaled {'up' if replicas > before else 'down'} replica set "
                        f"{rs['metadata']['name']} from {before} to {replicas}", "deployment-controller")
        return self._update("apps", "replicasets", rs, new)

    @staticmethod
    def _view(rs: dict[str, Any] | None) -> RSView:
        if rs is None:
            return RSView("", 0, 0)
        return RSView(rs["metadata"]["name"], int(rs["spec"].get("replicas", 1)), int((rs.get("status") or {}).get("availableReplicas", 0)))

    def _adopt_revision(self, new_rs: dict[str, Any], olds: list[dict[str, Any]], d: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """A template seen before (a rollback) reuses its ReplicaSet, which becomes the newest revision."""
        top = max([_revision(rs) for rs in olds] + [0])
        if _revision(new_rs) > top:
            return new_rs
        new = copy.deepcopy(new_rs)
        new["metadata"].setdefault("annotations", {})[REVISION] = str(top + 1)
        if self._has_deadline(d):
            now = _format_time(self._now())
            _set_condition(status, {"type": "Progressing", "status": "True", "reason": "FoundNewReplicaSet",
                                    "message": f'Found new replica set "{new_rs["metadata"]["name"]}"', "lastUpdateTime": now,
                                    "lastTransitionTime": now})
        return self._update("apps", "replicasets", new_rs, new)

    def _rolling(self, d: dict[str, Any], new_rs: dict[str, Any] | None, olds: list[dict[str, Any]],
                 status: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        spec = d["spec"]
        desired = int(spec.get("replicas", 1))
        surge, unavailable = surge_and_unavailable(spec, desired)
        old_views = [self._view(rs) for rs in olds]
        if new_rs is None:
            new_rs = self._new_replicaset(d, olds, rollout_replicas(desired, surge, RSView("", 0, 0), old_views), status)
        else:
            new_rs = self._adopt_revision(new_rs, olds, d, status)
        if not any(v.replicas for v in old_views):
            new_rs = self._scale_rs(new_rs, desired, d)  # no rollout in flight: plain scaling
            return new_rs, olds, status
        new_rs = self._scale_rs(new_rs, rollout_replicas(desired, surge, self._view(new_rs), old_views), d)
        downs = scale_down_old(desired, unavailable, self._view(new_rs), old_views)
        olds = [self._scale_rs(rs, downs[rs["metadata"]["name"]], d) if rs["metadata"]["name"] in downs else rs for rs in olds]
        return new_rs, olds, status

    def _recreate(self, d: dict[str, Any], new_rs: dict[str, Any] | None, olds: list[dict[str, Any]],
                  status: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any]]:
        desired = int(d["spec"].get("replicas", 1))
        active = [rs for rs in olds if int(rs["spec"].get("replicas", 1)) > 0]
        if active:
            olds = [self._scale_rs(rs, 0, d) if rs in active else rs for rs in olds]
            return new_rs, olds, status
        old_uids = {rs["metadata"]["uid"] for rs in olds}
        running = [p for p in self._objects("", "pods", d["metadata"]["namespace"])
                   if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                   and any(r.get("uid") in old_uids for r in p["metadata"].get("ownerReferences") or ())]
        if running:
            return new_rs, olds, status  # Recreate: no new pod while an old one runs
        if new_rs is None:
            new_rs = self._new_replicaset(d, olds, desired, status)
        else:
            new_rs = self._adopt_revision(new_rs, olds, d, status)
        return self._scale_rs(new_rs, desired, d), olds, status

    def _cleanup(self, d: dict[str, Any], olds: list[dict[str, Any]]) -> None:
        """revisionHistoryLimit: the oldest fully scaled-down ReplicaSets beyond it are deleted."""
        limit = int(d["spec"].get("revisionHistoryLimit", 10))
        idle = [rs for rs in olds if int(rs["spec"].get("replicas", 1)) == 0 and int((rs.get("status") or {}).get("replicas", 0)) == 0
                and int(rs["metadata"].get("generation", 1)) <= int((rs.get("status") or {}).get("observedGeneration", 0))]
        idle.sort(key=_revision)
        for rs in idle[:max(0, len(idle) - limit)]:
            self._delete("apps", "replicasets", rs)

    @staticmethod
    def _has_deadline(d: dict[str, Any]) -> bool:
        return int(d["spec"].get("progressDeadlineSeconds", 600)) < 2**31 - 1

    def _deployment_status(self, d: dict[str, Any], new_rs: dict[str, Any] | None, olds: list[dict[str, Any]],
                           status: dict[str, Any], rollout: bool) -> None:
        d = self.s.get(self._res("apps", "deployments"), d["metadata"]["namespace"], d["metadata"]["name"]) or d
        new_rs = self._fresh(new_rs) if new_rs is not None else None
        everything = [self._fresh(rs) for rs in olds] + ([new_rs] if new_rs is not None else [])
        spec = d["spec"]
        desired = int(spec.get("replicas", 1))
        _, max_unavailable = surge_and_unavailable(spec, desired)
        st = lambda rs, k: int((rs.get("status") or {}).get(k, 0))  # noqa: E731
        available = sum(st(rs, "availableReplicas") for rs in everything)
        counts = {"observedGeneration": int(d["metadata"].get("generation", 1)),
                  "replicas": sum(st(rs, "replicas") for rs in everything),
                  "updatedReplicas": st(new_rs, "replicas") if new_rs is not None else 0,
                  "readyReplicas": sum(st(rs, "readyReplicas") for rs in everything),
                  "availableReplicas": available,
                  "unavailableReplicas": max(0, sum(int(rs["spec"].get("replicas", 1)) for rs in everything) - available)}
        old_status = d.get("status") or {}
        new_status = {k: v for k, v in status.items() if k not in counts}
        new_status.update({k: v for k, v in counts.items() if v})  # zero counts are omitted, as the real API's omitempty
        now_ts = self._now()
        now = _format_time(now_ts)
        if available >= desired - max_unavailable:
            _set_condition(new_status, {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                        "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now})
        else:
            _set_condition(new_status, {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                                        "message": "Deployment does not have minimum availability.", "lastUpdateTime": now,
                                        "lastTransitionTime": now})
        if rollout:
            self._progress(d, new_rs, old_status, new_status, counts, desired, now_ts)
        self._write_status("apps", "deployments", d, new_status)

    def _progress(self, d: dict[str, Any], new_rs: dict[str, Any] | None, old: dict[str, Any], new: dict[str, Any],
                  counts: dict[str, int], desired: int, now_ts: float) -> None:
        """syncRolloutStatus: the Progressing condition, its lastUpdateTime moved by progress only."""
        if not self._has_deadline(d) or d["spec"].get("paused"):
            return
        now = _format_time(now_ts)
        current = _condition({"status": new}, "Progressing")
        if counts["replicas"] == counts["updatedReplicas"] and current is not None and current.get("reason") == "NewReplicaSetAvailable":
            return
        rs_name = new_rs["metadata"]["name"] if new_rs is not None else None
        subject = f'ReplicaSet "{rs_name}"' if rs_name else f'Deployment "{d["metadata"]["name"]}"'
        complete = (counts["updatedReplicas"] == desired and counts["replicas"] == desired and counts["availableReplicas"] == desired)
        old_old = int(old.get("replicas", 0)) - int(old.get("updatedReplicas", 0))
        progressing = (counts["updatedReplicas"] != int(old.get("updatedReplicas", 0))
                       or counts["replicas"] - counts["updatedReplicas"] < old_old
                       or counts["readyReplicas"] > int(old.get("readyReplicas", 0))
                       or counts["availableReplicas"] > int(old.get("availableReplicas", 0)))
        if complete:
            _set_condition(new, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                                 "message": f"{subject} has successfully progressed.", "lastUpdateTime": now, "lastTransitionTime": now})
        elif progressing:
            cond = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": f"{subject} is progressing.",
                    "lastUpdateTime": now, "lastTransitionTime": now}
            if current is not None and current["status"] == "True":
                cond["lastTransitionTime"] = current.get("lastTransitionTime", now)
            new["conditions"] = [c for c in new.get("conditions", []) if c["type"] != "Progressing"]
            _set_condition(new, cond)
        elif current is not None and current.get("reason") != "ProgressDeadlineExceeded":
            since = _parse_time(current.get("lastUpdateTime")) or now_ts
            deadline = since + int(d["spec"].get("progressDeadlineSeconds", 600))
            if deadline < now_ts:
                _set_condition(new, {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": f"{subject} has timed out progressing.", "lastUpdateTime": now, "lastTransitionTime": now})
            else:
                self._due_at(deadline + 0.5)

    # ---- ReplicaSet controller ----

    def sync_replicaset(self, rs: dict[str, Any]) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        ns = meta["namespace"]
        match = label_selector(selector_string(spec.get("selector") or {}))
        pods = [p for p in self._objects("", "pods", ns) if _controlled_by(p, rs)]
        active = [p for p in pods if pod_active(p)]
        if not meta.get("deletionTimestamp"):
            diff = len(active) - int(spec.get("replicas", 1))
            if diff < 0:
                template = spec.get("template") or {}
                tmeta = template.get("metadata") or {}
                for _ in range(-diff):
                    pod = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": f"{meta['name']}-", "namespace": ns, "labels": dict(tmeta.get("labels") or {}),
                                        "ownerReferences": [_owner_ref(rs, "apps/v1", "ReplicaSet")]},
                           "spec": copy.deepcopy(template.get("spec") or {})}
                    if tmeta.get("annotations"):
                        pod["metadata"]["annotations"] = dict(tmeta["annotations"])
                    created = self._create("", "pods", ns, pod)
                    active.append(created)
                    self._event(rs, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", "replicaset-controller")
            elif diff > 0:
                for pod in pods_to_delete(active, diff):
                    self._delete("", "pods", pod)
                    active.remove(pod)
                    self._event(rs, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", "replicaset-controller")
        now = self._now()
        min_ready = int(spec.get("minReadySeconds", 0))
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        status: dict[str, Any] = {"replicas": len(active)}
        counts = {"fullyLabeledReplicas": sum(1 for p in active if all((p["metadata"].get("labels") or {}).get(k) == v
                                                                        for k, v in labels.items()) and match(p["metadata"].get("labels") or {})),
                  "readyReplicas": sum(1 for p in active if pod_ready(p)),
                  "availableReplicas": sum(1 for p in active if pod_available(p, min_ready, now)),
                  "observedGeneration": int(meta.get("generation", 1))}
        status.update({k: v for k, v in counts.items() if v})
        if (rs.get("status") or {}).get("conditions"):
            status["conditions"] = rs["status"]["conditions"]
        if min_ready > 0:
            for p in active:
                since = _parse_time((_condition(p, "Ready") or {}).get("lastTransitionTime"))
                if pod_ready(p) and since is not None and since + min_ready > now:
                    self._due_at(since + min_ready + 0.1)
        self._write_status("apps", "replicasets", self._fresh(rs), status)

    # ---- scheduler ----

    def schedule(self) -> None:
        node = self.s.get(self._res("", "nodes"), None, self.node_name)
        if node is None:
            return
        pods = self._objects("", "pods")
        bound = [p for p in pods if (p.get("spec") or {}).get("nodeName") == self.node_name
                 and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        pending = [p for p in pods if not (p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")
                   and (p.get("spec") or {}).get("schedulerName", "default-scheduler") == "default-scheduler"]
        pending.sort(key=lambda p: (-int((p.get("spec") or {}).get("priority", 0)), p["metadata"]["creationTimestamp"],
                                    p["metadata"]["namespace"], p["metadata"]["name"]))
        now = _format_time(self._now())
        for pod in pending:
            reasons = fits(pod, node, bound)
            status = copy.deepcopy(pod.get("status") or {})
            status.setdefault("phase", "Pending")
            if reasons:
                message = unschedulable_message(reasons)
                current = _condition(pod, "PodScheduled")
                if current and current.get("status") == "False" and current.get("message") == message:
                    continue
                status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "PodScheduled"] + [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": now}]
                self._write_status("", "pods", pod, status, SCHEDULER)
                self._event(pod, "FailedScheduling", message, "default-scheduler", "Warning")
                continue
            new = copy.deepcopy(pod)
            new["spec"]["nodeName"] = self.node_name
            bound_pod = self._update("", "pods", pod, new, None, SCHEDULER)
            status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "PodScheduled"] + [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now}]
            bound.append(self._write_status("", "pods", bound_pod, status, SCHEDULER))
            self._event(pod, "Scheduled", f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                        f"to {self.node_name}", "default-scheduler")

    # ---- EndpointSlice controller ----

    def sync_endpoint_slices(self, svc: dict[str, Any]) -> None:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        if not spec.get("selector") or spec.get("type") == "ExternalName" or meta.get("deletionTimestamp"):
            return
        ns = meta["namespace"]
        match = label_selector(selector_string({"matchLabels": spec["selector"]}))
        pods = [p for p in self._objects("", "pods", ns) if match(p["metadata"].get("labels") or {})]
        groups = slice_groups(svc, pods) or [([], [])]  # no endpoints: one empty placeholder slice
        existing = [s for s in self._objects("discovery.k8s.io", "endpointslices", ns) if _controlled_by(s, svc)
                    and (s["metadata"].get("labels") or {}).get("endpointslice.kubernetes.io/managed-by") == SLICE_MANAGER]
        labels = {**(meta.get("labels") or {}), "kubernetes.io/service-name": meta["name"],
                  "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER}
        unmatched = list(existing)
        pending = []
        for ports, endpoints in groups:
            same = next((s for s in unmatched if (s.get("ports") or []) == ports), None)
            if same is not None:
                unmatched.remove(same)
                self._write_slice(same, ports, endpoints, labels)
            else:
                pending.append((ports, endpoints))
        for ports, endpoints in pending:
            if unmatched:
                self._write_slice(unmatched.pop(0), ports, endpoints, labels)
                continue
            body: dict[str, Any] = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                    "metadata": {"generateName": f"{meta['name']}-", "namespace": ns, "labels": labels,
                                                 "ownerReferences": [_owner_ref(svc, "v1", "Service")]},
                                    "addressType": "IPv4", "endpoints": endpoints}
            if ports:
                body["ports"] = ports
            self._create("discovery.k8s.io", "endpointslices", ns, body)
        for s in unmatched:
            self._delete("discovery.k8s.io", "endpointslices", s)

    def _write_slice(self, current: dict[str, Any], ports: list[dict[str, Any]], endpoints: list[dict[str, Any]],
                     labels: dict[str, str]) -> None:
        new = copy.deepcopy(current)
        new["endpoints"] = endpoints
        if ports:
            new["ports"] = ports
        else:
            new.pop("ports", None)
        new["metadata"]["labels"] = labels
        if new != current:
            self._update("discovery.k8s.io", "endpointslices", current, new)
