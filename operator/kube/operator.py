"""What the operator does for each custom resource: assess, plan, apply, report.

:class:`Reconciler` holds the logic; :mod:`infernetes.operator.kube.handlers` wires it into kopf.
A bad spec is reported (``Ready=False`` with Elasticsearch's reason, an Event) and never creates
a workload; a valid one is planned purely and applied idempotently; status is recomputed from
what the cluster shows, and written only when it changes.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from ...worker.download import builtin, canonical_id
from ..errors import InfernetesError
from ..records import Deployment, Endpoint
from . import API_VERSION, DEPLOYMENT_KIND, DEPLOYMENTS, ENDPOINT_KIND, ENDPOINTS, ANNOTATION_FORCE_DELETE
from .client import Kube
from .names import k8s_name
from .placement import placement_of
from .planner import Owner, desired_replicas, plan, selector_string, workload_name
from .resources import deployment_from_cr, endpoint_from_cr, find_owner
from .settings import OperatorSettings
from .status import compute_status

log = logging.getLogger("infernetes.operator")


class ClusterCatalog:
    """Models the cluster can serve: the built-ins, plus those the settings declare."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings

    def task_of(self, model_id: str) -> str | None:
        spec = builtin(model_id)
        if spec is not None:
            return spec.task_type
        extra = self.settings.models.get(model_id) or self.settings.models.get(canonical_id(model_id))
        return extra.task_type if extra else None

    def size_of(self, model_id: str) -> int | None:
        extra = self.settings.models.get(model_id)
        return extra.size_bytes if extra else None


@dataclass
class Assessment:
    """What a resource asks for, or why it cannot be served."""

    kind: str
    deployment: Deployment | None = None  # the deployment this resource owns
    endpoint: Endpoint | None = None
    reuses: str | None = None  # the deployment id an endpoint attaches to
    problem: tuple[str, str] | None = None  # (reason, message)
    permanent: bool = True

    @property
    def deployment_id(self) -> str | None:
        if self.deployment is not None:
            return self.deployment.deployment_id
        return self.reuses


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_view(status: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (status or {}).items() if k not in ("kopf", "autoscaler")}


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, catalog: ClusterCatalog | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.catalog = catalog or ClusterCatalog(settings)

    # -- assessment (no writes) ---------------------------------------------------------------

    async def assess(self, plural: str, body: dict[str, Any]) -> Assessment:
        kind = ENDPOINT_KIND if plural == ENDPOINTS else DEPLOYMENT_KIND
        try:
            if plural == ENDPOINTS:
                endpoint, dep = endpoint_from_cr(body, self.settings.queue_capacity)
                found = Assessment(kind, deployment=dep, endpoint=endpoint,
                                   reuses=None if dep else endpoint.deployment_id)
            else:
                found = Assessment(kind, deployment=deployment_from_cr(body, self.settings.queue_capacity))
        except InfernetesError as exc:
            return Assessment(kind, problem=("InvalidSpec", exc.reason))
        namespace = body["metadata"]["namespace"]
        if found.deployment is not None:
            dep = found.deployment
            task = self.catalog.task_of(dep.model_id)
            if task is None:  # a model uploaded to the gateway (Eland)? Its metadata says.
                from .uploads import uploaded_task

                task = await uploaded_task(self.settings, dep.model_id)
            if task is None:
                found.problem = ("ModelNotFound", (
                    f"Could not find trained model [{dep.model_id}]: it is neither a built-in model nor declared in "
                    "the operator's models settings (the chart's `models` value)"))
                found.permanent = False  # the settings may gain it
                return found
            expected = found.endpoint.task_type if found.endpoint else task
            if task != expected:
                found.problem = ("TaskMismatch", (
                    f"Model [{dep.model_id}] serves the [{task}] task and cannot be used for the [{expected}] task"))
                return found
            found.deployment = dep.with_(task_type=task)
            existing = await self.kube.get("apps/v1", "deployments", namespace, workload_name(dep.deployment_id))
            threads = _threads_of(existing)
            if threads is not None and threads != dep.num_threads:
                found.problem = ("InvalidSpec", "Validation Failed: 1: [num_threads] cannot be updated;")
                return found
            clash = await self.owner_of(namespace, dep.deployment_id)
            if clash is not None and clash["metadata"]["uid"] != body["metadata"].get("uid"):
                found.problem = ("DeploymentConflict", (
                    f"Could not start model deployment because an existing deployment with the same id "
                    f"[{dep.deployment_id}] exists ({clash['kind']} {clash['metadata']['name']})"))
                found.permanent = False
        else:
            target = await self.owner_of(namespace, found.reuses or "")
            if target is None:
                found.problem = ("DeploymentNotFound", (
                    f"Could not find deployment [{found.reuses}]; create a ModelDeployment (or an InferenceEndpoint) "
                    "that provides it"))
                found.permanent = False
            else:
                target_found = await self.assess(
                    ENDPOINTS if target["kind"] == ENDPOINT_KIND else DEPLOYMENTS, target)
                tdep = target_found.deployment
                if tdep is not None and found.endpoint is not None and tdep.task_type != found.endpoint.task_type:
                    found.problem = ("TaskMismatch", (
                        f"Deployment [{tdep.deployment_id}] serves the [{tdep.task_type}] task and cannot be used "
                        f"for the [{found.endpoint.task_type}] task"))
        return found

    async def owner_of(self, namespace: str, deployment_id: str) -> dict[str, Any] | None:
        return await find_owner(self.kube, namespace, deployment_id)

    async def dependents(self, namespace: str, deployment_id: str, exclude_uid: str | None) -> list[str]:
        """Endpoints that attach to a deployment they do not own."""
        out = []
        for cr in await self.kube.list(API_VERSION, ENDPOINTS, namespace):
            if cr["metadata"].get("uid") == exclude_uid or cr["metadata"].get("deletionTimestamp"):
                continue
            spec = cr.get("spec") or {}
            ss = spec.get("service_settings") or {}
            if ss.get("model_id") is None and ss.get("deployment_id") == deployment_id:
                out.append(spec.get("inference_id") or cr["metadata"]["name"])
        return sorted(out)

    # -- actions --------------------------------------------------------------------------------

    async def reconcile(self, plural: str, body: dict[str, Any]) -> tuple[Assessment, list[str]]:
        """Create or update the workload; returns the assessment and what was changed."""
        found = await self.assess(plural, body)
        if found.problem or found.deployment is None:
            return found, []
        dep = found.deployment
        namespace = body["metadata"]["namespace"]
        existing = await self.kube.get("apps/v1", "deployments", namespace, workload_name(dep.deployment_id))
        current = (existing or {}).get("spec", {}).get("replicas")
        scaled = (body.get("status") or {}).get("autoscaler", {}).get("target")
        if dep.adaptive_enabled and isinstance(scaled, int):
            current = scaled
        replicas = desired_replicas(dep, current, self.settings)
        owner = Owner(API_VERSION, found.kind, body["metadata"]["name"], body["metadata"]["uid"])
        from .uploads import uploaded_size  # an Eland upload's size, read with its task

        size = self.catalog.size_of(dep.model_id) or uploaded_size(self.settings, dep.model_id)
        workload = plan(dep, namespace=namespace, replicas=replicas, owner=owner, settings=self.settings,
                        model_size_bytes=size,
                        placement=placement_of(body.get("spec")))
        changes = []
        for manifest in workload.manifests:
            result = await self.kube.apply(manifest)
            if result != "unchanged":
                changes.append(f"{manifest['kind']} {manifest['metadata']['name']} {result}")
        return found, changes

    async def status(self, plural: str, body: dict[str, Any], found: Assessment | None = None) -> dict[str, Any]:
        """The status the resource should show now."""
        found = found or await self.assess(plural, body)
        namespace = body["metadata"]["namespace"]
        dep_id = found.deployment_id
        workload = pods = None
        if dep_id and found.problem is None:
            name = workload_name(dep_id)
            workload = await self.kube.get("apps/v1", "deployments", namespace, name)
            pods = await self.kube.list("v1", "pods", namespace, selector_string(dep_id))
        target = ((workload or {}).get("spec") or {}).get("replicas") or 0
        model_id = found.deployment.model_id if found.deployment else None
        if model_id is None and workload is not None:
            model_id = (workload["metadata"].get("annotations") or {}).get("infernetes.dev/model-id")
        if model_id is None and found.endpoint is not None:
            model_id = found.endpoint.body.get("service_settings", {}).get("model_id")
        return compute_status(
            deployment_id=dep_id,
            model_id=model_id,
            target=target if workload else (1 if found.problem is None else 0),
            workload=workload,
            pods=pods or [],
            generation=body["metadata"].get("generation"),
            problem=found.problem,
            previous=body.get("status"),
            now=now_iso(),
            workload_name=workload_name(dep_id) if dep_id and found.problem is None else None,
            selector=selector_string(dep_id) if dep_id else None,
        )

    async def deletion_blocker(self, plural: str, body: dict[str, Any]) -> str | None:
        """Why a resource must not go yet: other endpoints use its deployment (unless forced)."""
        annotations = body["metadata"].get("annotations") or {}
        if annotations.get(ANNOTATION_FORCE_DELETE, "").lower() == "true":
            return None
        found = await self.assess(plural, body)
        if found.deployment is None:
            return None
        users = await self.dependents(body["metadata"]["namespace"], found.deployment.deployment_id,
                                      body["metadata"].get("uid"))
        if not users:
            return None
        what = "Inference endpoint" if plural == ENDPOINTS else "Model deployment"
        ident = (found.endpoint.inference_id if found.endpoint else found.deployment.deployment_id)
        return (f"{what} [{ident}] owns deployment [{found.deployment.deployment_id}], which inference endpoints "
                f"[{', '.join(users)}] use; delete them first, or annotate {ANNOTATION_FORCE_DELETE}=true to force")


class StatusRefresher:
    """Keeps every resource's status current without a per-object timer (which would need a finalizer).

    Workload and pod events mark the resources that depend on them; a loop refreshes marked resources
    at once and all of them every ``status_interval_s`` (a resync, in case an event was missed)."""

    def __init__(self, reconciler: Reconciler, namespaces: list[str] | None) -> None:
        self.reconciler = reconciler
        self.kube = reconciler.kube
        self.namespaces = namespaces
        self.dirty: set[tuple[str, str]] = set()  # (namespace, deployment label value or "*")
        import asyncio

        self.wake = asyncio.Event()

    def mark(self, namespace: str, deployment_label: str | None) -> None:
        self.dirty.add((namespace, deployment_label or "*"))
        self.wake.set()

    async def run(self) -> None:
        import asyncio

        interval = self.reconciler.settings.status_interval_s
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
                await asyncio.sleep(0.05)  # coalesce bursts of pod events
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            dirty, self.dirty = self.dirty, set()
            try:
                await self.refresh(dirty or None)
            except Exception:  # the next round retries; never let the loop die
                log.exception("status refresh failed")

    async def refresh(self, only: set[tuple[str, str]] | None = None) -> int:
        """Refresh statuses (all, or those of the marked deployments); returns how many were written."""
        from .names import label_value

        namespaces = self.namespaces or sorted({ns for ns, _ in only} if only else [None])  # type: ignore[list-item]
        written = 0
        for namespace in namespaces:
            for plural in (DEPLOYMENTS, ENDPOINTS):
                for cr in await self.kube.list(API_VERSION, plural, namespace):
                    if cr["metadata"].get("deletionTimestamp"):
                        continue
                    found = await self.reconciler.assess(plural, cr)
                    ns = cr["metadata"]["namespace"]
                    if only is not None and (ns, "*") not in only and (
                            ns, label_value(found.deployment_id or "")) not in only:
                        continue
                    status = await self.reconciler.status(plural, cr, found)
                    if not status_changed(cr.get("status"), status):
                        continue
                    old = (cr.get("status") or {}).get("state")
                    await self.kube.patch(API_VERSION, plural, ns, cr["metadata"]["name"], {"status": status},
                                          subresource="status")
                    written += 1
                    if old and old != status["state"]:
                        detail = status.get("reason") or status["allocations"] + " allocations ready"
                        await post_event(self.kube, cr, "Warning" if status["state"] == "failed" else "Normal",
                                         "StateChanged", f"{old} -> {status['state']}: {detail}")
        return written


async def post_event(kube: Kube, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """An Event about a resource, posted outside kopf's handlers (kopf.event needs a handler's context)."""
    meta = obj["metadata"]
    stamp = now_iso()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind"),
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "infernetes"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": "infernetes.dev/operator",
    }
    try:
        await kube.create("v1", "events", meta["namespace"], event)
    except InfernetesError as exc:  # events are best effort
        log.warning("could not post an event: %s", exc)


def status_changed(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return _status_view(current) != _status_view({**(current or {}), **new})


def _threads_of(workload: dict[str, Any] | None) -> int | None:
    if not workload:
        return None
    for c in workload["spec"]["template"]["spec"].get("containers", []):
        for e in c.get("env", []):
            if e.get("name") == "INFERNETES_WORKER_NUM_THREADS":
                try:
                    return int(e["value"])
                except (KeyError, ValueError):
                    return None
    return None


__all__ = ["Reconciler", "ClusterCatalog", "Assessment", "status_changed", "k8s_name"]
