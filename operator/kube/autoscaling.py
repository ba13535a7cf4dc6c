"""Adaptive allocations in a cluster: one loop in the operator for every adaptive resource.

Each round reads the worker pods' ``/metrics`` (pods selected by label), runs the pure autoscaler,
patches the Deployment's replicas only when the count changes (with an Event), and keeps the
decision and the smoothing state in ``status.autoscaler``, so a restarted operator carries on where
the last one stopped. One loop rather than a kopf timer per resource: timers would put a finalizer
on every adaptive endpoint.

Scale from zero: the gateway holds requests while a deployment has no ready allocation and writes
that demand onto the worker Deployment (annotation ``infernetes.dev/demand``: requests held and
when), re-stamped while they wait. The autoscaler counts fresh demand as traffic, and never scales
down while a pod is still starting, so the allocation the gateway asked for is not taken back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import httpx

from ..autoscaler import AutoscalerSettings, Sample, decide, parse_metrics
from ..runtime.autoscaling import AutoscalerMetrics
from . import API_VERSION, DEPLOYMENTS, ENDPOINTS, GROUP
from .operator import Reconciler, post_event
from .planner import workload_name

log = logging.getLogger("infernetes.autoscaler")
PERSIST_EVERY_S = 15.0  # the smoothing state is written at least this often (and on every change)
ANNOTATION_DEMAND = f"{GROUP}/demand"  # {"held": requests the gateway holds, "time": epoch seconds}


def demand_refresh_s(settings: Any) -> float:
    """How often the gateway re-stamps held demand: well within the time the autoscaler trusts it."""
    return max(0.5, min(5.0, float(settings.autoscale_interval_s)))


def demand_ttl_s(interval_s: float) -> float:
    """Demand older than this is stale (its gateway went away): three autoscaler rounds, at least 30 s."""
    return max(30.0, 3 * interval_s)


def held_demand(workload: dict[str, Any] | None, now: float, ttl_s: float) -> int:
    """Requests the gateway holds for this workload, if its stamp is fresh."""
    raw = (((workload or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DEMAND)
    if not raw:
        return 0
    try:
        record = json.loads(raw)
        held, stamp = int(record.get("held", 0)), float(record.get("time", 0))
    except (ValueError, TypeError, AttributeError):
        return 0
    return held if held > 0 and now - stamp <= ttl_s else 0


def starting(pod: dict[str, Any]) -> bool:
    """A pod on its way up: not ready, not terminating, not failed for good."""
    phase = (pod.get("status") or {}).get("phase")
    return not _ready(pod) and not pod["metadata"].get("deletionTimestamp") and phase not in ("Failed", "Succeeded")


def _ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions", []) or [])


def pod_url(pod: dict[str, Any], default_port: int) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    port = default_port
    for c in (pod.get("spec") or {}).get("containers", []):
        for p in c.get("ports", []) or []:
            if p.get("name") == "http":
                port = p["containerPort"]
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


class ClusterAutoscaler:
    def __init__(self, reconciler: Reconciler, namespaces: list[str] | None, settings: AutoscalerSettings,
                 metrics: AutoscalerMetrics | None = None) -> None:
        self.reconciler = reconciler
        self.kube = reconciler.kube
        self.namespaces = namespaces
        self.settings = settings
        self.metrics = metrics or AutoscalerMetrics()
        self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.interval_s)
                try:
                    await self.tick()
                except Exception:  # the next round retries
                    log.exception("autoscaling round failed")
        finally:
            await self._client.aclose()

    async def _sample(self, pod: dict[str, Any]) -> Sample | None:
        url = pod_url(pod, self.reconciler.settings.worker_port)
        if url is None:
            return None
        try:
            resp = await self._client.get(url + "/metrics")
            return parse_metrics(pod["metadata"]["name"], resp.text)
        except httpx.HTTPError:
            return None

    async def tick(self) -> int:
        """One round over every adaptive resource; returns how many were scaled."""
        scaled = 0
        for namespace in self.namespaces or [None]:  # type: ignore[list-item]
            for plural in (ENDPOINTS, DEPLOYMENTS):
                # The operator's watch cache when it has one: a round costs no API read, only the writes it decides.
                for cr in await self.reconciler.read_crs(namespace, plural):
                    if cr["metadata"].get("deletionTimestamp"):
                        continue
                    with contextlib.suppress(Exception):
                        scaled += await self.scale_one(plural, cr)
        return scaled

    async def scale_one(self, plural: str, cr: dict[str, Any]) -> int:
        found = await self.reconciler.assess(plural, cr)
        dep = found.deployment
        if dep is None or found.problem or not dep.adaptive_enabled:
            return 0
        namespace = cr["metadata"]["namespace"]
        name = workload_name(dep.deployment_id)
        workload = await self.reconciler.read_child("deployments", namespace, name)
        if workload is None:
            return 0
        current = int(workload["spec"].get("replicas") or 0)
        pods = await self.reconciler.read_pods(namespace, dep.deployment_id)
        ready = [p for p in pods if _ready(p)]
        samples = [s for s in await asyncio.gather(*(self._sample(p) for p in ready)) if s is not None]
        previous = (cr.get("status") or {}).get("autoscaler") or {}
        bounds = dep.bounds(self.reconciler.settings.adaptive_cap)
        now = time.time()
        held = held_demand(workload, now, demand_ttl_s(self.settings.interval_s))
        decision = decide(previous.get("state"), samples, now=now, current=current, bounds=bounds,
                          settings=self.settings, held=held)
        if decision.desired < current and any(starting(p) for p in pods):
            # A pod still starting has served nothing yet: its silence is not idleness.
            decision = type(decision)(current, decision.reason + "; a pod is starting: no scale-down",
                                      decision.load, decision.state)
        self.metrics.record(dep.deployment_id, decision.desired, decision.load, current)
        changed = decision.desired != current
        if changed:
            await self.kube.patch("apps/v1", "deployments", namespace, name, {"spec": {"replicas": decision.desired}})
            kind = "ScaledUp" if decision.desired > current else "ScaledDown"
            await post_event(self.kube, {**cr, "kind": cr.get("kind")}, "Normal", kind,
                             f"{current} -> {decision.desired} allocations: {decision.reason}")
            log.info("%s %s/%s: %d -> %d allocations (%s)", plural, namespace, cr["metadata"]["name"], current,
                     decision.desired, decision.reason)
        if changed or now - float(previous.get("time") or 0) >= PERSIST_EVERY_S:
            record = {"target": decision.desired, "reason": decision.reason, "load": decision.load,
                      "time": now, "state": decision.state}
            await self.kube.patch(API_VERSION, plural, namespace, cr["metadata"]["name"],
                                  {"status": {"autoscaler": record}}, subresource="status")
        return int(changed)


async def record_demand(kube: Any, namespace: str, deployment_id: str, held: int, owner: dict[str, Any],
                        plural: str) -> None:
    """The gateway holds ``held`` requests for a deployment: stamp that on its worker Deployment, and wake it
    (0 -> 1 replica) when it has none."""
    name = workload_name(deployment_id)
    workload = await kube.get("apps/v1", "deployments", namespace, name)
    if workload is None:
        return
    stamp = json.dumps({"held": held, "time": round(time.time(), 3)})
    patch: dict[str, Any] = {"metadata": {"annotations": {ANNOTATION_DEMAND: stamp}}}
    wake = (workload["spec"].get("replicas") or 0) == 0
    if wake:
        patch["spec"] = {"replicas": 1}
    await kube.patch("apps/v1", "deployments", namespace, name, patch)
    if not wake:
        return
    # The reconciler keeps adaptive replicas at status.autoscaler.target: it must agree with the wake-up.
    await kube.patch(API_VERSION, plural, namespace, owner["metadata"]["name"], {"status": {"autoscaler": {
        "target": 1, "reason": "a request arrived while scaled to zero", "time": time.time()}}},
        subresource="status")
    await post_event(kube, owner, "Normal", "ScaledUp", "0 -> 1 allocations: a request arrived while scaled to zero")


async def scale_from_zero(kube: Any, namespace: str, deployment_id: str, owner: dict[str, Any], plural: str) -> None:
    """A request arrived while the deployment has no allocation: start one now."""
    await record_demand(kube, namespace, deployment_id, 1, owner, plural)
