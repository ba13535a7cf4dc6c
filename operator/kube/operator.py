"""What the operator does for each custom resource: assess, plan, apply, report.

:class:`Reconciler` holds the logic; :class:`Controller` runs it level-triggered: every event on a
custom resource, or on a Deployment, Service, PodDisruptionBudget or pod the operator manages, marks
the deployment it belongs to, and the owner's reconcile runs again (a deleted child is recreated,
``kubectl scale`` drift undone); a resync every ``status_interval_s`` catches anything missed.
Children are written with server-side apply (field manager ``infernetes``, forced), so fields dropped
from the plan disappear. What the watches showed is kept in one :class:`ClusterCache` (filled by one
LIST per kind at startup): a reconcile reads the cache, never a LIST of every resource.

A bad spec is reported (``Ready=False`` with Elasticsearch's reason, one Warning event per distinct
problem) and never creates a workload; status is recomputed from what the cluster shows, written
only when it changes, and ``observedGeneration`` moves only once that generation was applied.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from ...worker.download import builtin, canonical_id
from ..errors import InfernetesError
from ..records import Deployment, Endpoint
from . import (
    ANNOTATION_FORCE_DELETE,
    API_VERSION,
    DEPLOYMENT_KIND,
    DEPLOYMENTS,
    ENDPOINT_KIND,
    ENDPOINTS,
    GROUP,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    MANAGER,
)
from .client import PLURALS, Kube
from .names import k8s_name, label_value
from .placement import placement_of
from .planner import Owner, desired_replicas, plan, selector_string, workload_name
from .resources import deployment_from_cr, endpoint_from_cr, own_deployment_id
from .settings import OperatorSettings
from .status import compute_status

log = logging.getLogger("infernetes.operator")
# On a resource whose deployment other endpoints use, and only there: deleting it waits until they are gone
# (Elasticsearch refuses to delete such an endpoint). Elsewhere no finalizer: deletion never waits for us.
FINALIZER = f"{GROUP}/shared-deployment"
LEGACY_FINALIZER = f"{GROUP}/protect-shared-deployment"  # earlier versions put it on every owner: removed


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
    return {k: v for k, v in (status or {}).items() if k not in ("kopf", "autoscaler") and v is not None}


CHILD_KINDS = {  # plural -> apiVersion of what the operator creates and watches (label managed-by=infernetes)
    "deployments": "apps/v1",
    "services": "v1",
    "poddisruptionbudgets": "policy/v1",
    "pods": "v1",
}
CR_PLURALS = (DEPLOYMENTS, ENDPOINTS)


def _version(obj: dict[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def creation_order(cr: dict[str, Any]) -> tuple[str, str, str]:
    """Who came first: creation time, then name (then kind): the same answer on every replica, every time."""
    meta = cr.get("metadata", {})
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""), str(cr.get("kind") or "")


def deployment_id_of(cr: dict[str, Any]) -> str | None:
    """The deployment a resource provides, or the one an endpoint reuses."""
    own = own_deployment_id(cr)
    if own is not None:
        return own
    ss = (cr.get("spec") or {}).get("service_settings") or {}
    value = ss.get("deployment_id")
    return str(value) if value else None


def controller_uid(obj: dict[str, Any] | None) -> str | None:
    for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class ClusterCache:
    """What the operator's watches show: the custom resources, and the children and pods it manages.

    Filled by one LIST per kind and namespace at startup, then kept by the watch events (kopf's);
    an older resourceVersion never replaces a newer one."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in (*CR_PLURALS, *CHILD_KINDS)}

    def put(self, plural: str, obj: dict[str, Any], deleted: bool = False) -> None:
        meta = obj.get("metadata", {})
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        store = self.objects[plural]
        if deleted:
            old = store.get(key)
            if old is None or old.get("metadata", {}).get("uid") == meta.get("uid"):
                store.pop(key, None)
            return
        old = store.get(key)
        if old is not None and old.get("metadata", {}).get("uid") == meta.get("uid") and _version(old) > _version(obj):
            return
        if plural == ENDPOINTS:
            obj = {**obj, "kind": ENDPOINT_KIND}
        elif plural == DEPLOYMENTS:
            obj = {**obj, "kind": DEPLOYMENT_KIND}
        store[key] = obj

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects[plural].get((namespace, name))

    def list(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return [o for (ns, _), o in self.objects[plural].items() if namespace is None or ns == namespace]

    def labelled(self, plural: str, namespace: str, label: str) -> list[dict[str, Any]]:
        return [o for o in self.list(plural, namespace)
                if (o.get("metadata", {}).get("labels") or {}).get(LABEL_DEPLOYMENT) == label]

    async def fill(self, kube: Kube, namespaces: list[str] | None) -> None:
        """The initial state: one LIST per kind and namespace (or cluster-wide)."""
        for namespace in namespaces or [None]:  # type: ignore[list-item]
            for plural in CR_PLURALS:
                for obj in await kube.list(API_VERSION, plural, namespace):
                    self.put(plural, obj)
            for plural, api_version in CHILD_KINDS.items():
                for obj in await kube.list(api_version, plural, namespace, f"{LABEL_MANAGED}={MANAGER}"):
                    self.put(plural, obj)


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, catalog: ClusterCatalog | None = None,
                 cache: ClusterCache | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.catalog = catalog or ClusterCatalog(settings)
        self.cache = cache  # None: every read goes to the API (one-off use, tests)

    # -- reads: the cache when there is one ----------------------------------------------------

    async def read_crs(self, namespace: str | None, plural: str) -> list[dict[str, Any]]:
        if self.cache is not None:
            return self.cache.list(plural, namespace)
        kind = ENDPOINT_KIND if plural == ENDPOINTS else DEPLOYMENT_KIND
        return [{**cr, "kind": kind} for cr in await self.kube.list(API_VERSION, plural, namespace)]

    async def read_child(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.cache is not None:
            return self.cache.get(plural, namespace, name)
        return await self.kube.get(CHILD_KINDS[plural], plural, namespace, name)

    async def read_pods(self, namespace: str, deployment_id: str) -> list[dict[str, Any]]:
        if self.cache is not None:
            return self.cache.labelled("pods", namespace, label_value(deployment_id))
        return await self.kube.list("v1", "pods", namespace, selector_string(deployment_id))

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
            clash = await self.owner_of(namespace, dep.deployment_id)
            if clash is not None and clash["metadata"]["uid"] != body["metadata"].get("uid"):
                found.problem = ("DeploymentConflict", (
                    f"Could not start model deployment because an existing deployment with the same id "
                    f"[{dep.deployment_id}] exists ({clash['kind']} {clash['metadata']['name']})"))
                found.permanent = False
                return found
            existing = await self.read_child("deployments", namespace, workload_name(dep.deployment_id))
            threads = _threads_of(existing)
            if threads is not None and threads != dep.num_threads and \
                    controller_uid(existing) == body["metadata"].get("uid"):
                found.problem = ("InvalidSpec", "Validation Failed: 1: [num_threads] cannot be updated;")
                return found
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
        """The resource that provides a deployment id: the live workload's controller when it still asks for
        it (a live controller reference is never taken over), else the earliest created, then by name."""
        candidates = [cr for plural in CR_PLURALS for cr in await self.read_crs(namespace, plural)
                      if not cr["metadata"].get("deletionTimestamp") and own_deployment_id(cr) == deployment_id]
        if not candidates:
            return None
        workload = await self.read_child("deployments", namespace, workload_name(deployment_id))
        uid = controller_uid(workload)
        for cr in candidates:
            if uid is not None and cr["metadata"].get("uid") == uid:
                return cr
        return min(candidates, key=creation_order)

    async def dependents(self, namespace: str, deployment_id: str, exclude_uid: str | None) -> list[str]:
        """Endpoints that attach to a deployment they do not own."""
        out = []
        for cr in await self.read_crs(namespace, ENDPOINTS):
            if cr["metadata"].get("uid") == exclude_uid or cr["metadata"].get("deletionTimestamp"):
                continue
            spec = cr.get("spec") or {}
            ss = spec.get("service_settings") or {}
            if ss.get("model_id") is None and ss.get("deployment_id") == deployment_id:
                out.append(spec.get("inference_id") or cr["metadata"]["name"])
        return sorted(out)

    # -- actions --------------------------------------------------------------------------------

    async def reconcile(self, plural: str, body: dict[str, Any]) -> tuple[Assessment, list[str]]:
        """Make the workload what the spec asks for; returns the assessment and what was changed.
        Raises (InfernetesError) when the API refuses a write: the caller retries, and must not report
        this generation as observed."""
        found = await self.assess(plural, body)
        if found.problem or found.deployment is None:
            return found, []
        dep = found.deployment
        namespace = body["metadata"]["namespace"]
        uid = body["metadata"]["uid"]
        name = workload_name(dep.deployment_id)
        existing = await self.read_child("deployments", namespace, name)
        current = (existing or {}).get("spec", {}).get("replicas")
        scaled = (body.get("status") or {}).get("autoscaler", {}).get("target")
        if dep.adaptive_enabled and existing is None and isinstance(scaled, int):
            current = scaled  # recreated: where the autoscaler had it
        replicas = desired_replicas(dep, current, self.settings)
        owner = Owner(API_VERSION, found.kind, body["metadata"]["name"], uid)
        from .uploads import uploaded_size  # an Eland upload's size, read with its task

        size = self.catalog.size_of(dep.model_id) or uploaded_size(self.settings, dep.model_id)
        workload = plan(dep, namespace=namespace, replicas=replicas, owner=owner, settings=self.settings,
                        model_size_bytes=size,
                        placement=placement_of(body.get("spec")))
        changes = []
        for manifest in workload.manifests:
            plural_of = PLURALS[(manifest["apiVersion"], manifest["kind"])]
            live = await self.read_child(plural_of, namespace, manifest["metadata"]["name"])
            if live is not None and controller_uid(live) not in (None, uid):
                # Another (or a deleted) resource's: the owner was decided above, so this one is being
                # garbage-collected with its deleted owner. Never rewrite a controller reference: replace it.
                await self.kube.delete(manifest["apiVersion"], plural_of, namespace, manifest["metadata"]["name"])
                live = None
            elif live is not None and manifest["kind"] == "Deployment" and \
                    live.get("spec", {}).get("selector") != manifest["spec"]["selector"]:
                # A selector is immutable: a workload of an older label scheme is replaced, not patched.
                await self.kube.delete("apps/v1", "deployments", namespace, manifest["metadata"]["name"])
                live = None
            result, applied = await self.kube.apply_object(manifest, live if self.cache is not None else False)
            if applied and self.cache is not None:
                self.cache.put(plural_of, applied)  # the status computed next sees what was just applied
            if result != "unchanged":
                changes.append(f"{manifest['kind']} {manifest['metadata']['name']} {result}")
        return found, changes

    async def status(self, plural: str, body: dict[str, Any], found: Assessment | None = None, *,
                     applied: bool = True) -> dict[str, Any]:
        """The status the resource should show now. ``applied``: this generation's spec was applied (or
        judged: a spec refused is observed too); else ``observedGeneration`` stays where it was."""
        found = found or await self.assess(plural, body)
        namespace = body["metadata"]["namespace"]
        dep_id = found.deployment_id
        workload = pods = None
        if dep_id and found.problem is None:
            workload = await self.read_child("deployments", namespace, workload_name(dep_id))
            pods = await self.read_pods(namespace, dep_id)
        target = ((workload or {}).get("spec") or {}).get("replicas") or 0
        model_id = found.deployment.model_id if found.deployment else None
        if model_id is None and workload is not None:
            model_id = (workload["metadata"].get("annotations") or {}).get("infernetes.dev/model-id")
        if model_id is None and found.endpoint is not None:
            model_id = found.endpoint.body.get("service_settings", {}).get("model_id")
        previous = body.get("status") or {}
        generation = body["metadata"].get("generation") if applied else previous.get("observedGeneration")
        return compute_status(
            deployment_id=dep_id,
            model_id=model_id,
            target=target if workload else (1 if found.problem is None else 0),
            workload=workload,
            pods=pods or [],
            generation=generation,
            problem=found.problem,
            previous=previous,
            now=now_iso(),
            workload_name=workload_name(dep_id) if dep_id and found.problem is None else None,
            selector=selector_string(dep_id) if dep_id else None,
            failure_after_s=self.settings.failure_after_s,
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


class Controller:
    """The level-triggered loop: events mark deployments (namespace, selector label value) dirty; the loop
    reconciles the resources that provide or use them, writes their status, keeps the finalizer where one is
    needed, and deletes children nobody wants. Everything once per ``status_interval_s`` (the resync)."""

    def __init__(self, reconciler: Reconciler, namespaces: list[str] | None) -> None:
        import asyncio

        if reconciler.cache is None:
            reconciler.cache = ClusterCache()
        self.reconciler = reconciler
        self.cache: ClusterCache = reconciler.cache
        self.kube = reconciler.kube
        self.namespaces = namespaces
        self.dirty: set[tuple[str, str]] = set()  # (namespace, deployment label value or "*")
        self.wake = asyncio.Event()
        self.reported: dict[str, tuple[str, str]] = {}  # uid -> the problem last posted as an event

    def mark(self, namespace: str, deployment_label: str | None) -> None:
        self.dirty.add((namespace, deployment_label or "*"))
        self.wake.set()

    def mark_resource(self, cr: dict[str, Any]) -> None:
        dep_id = deployment_id_of(cr)
        self.mark(cr["metadata"]["namespace"], label_value(dep_id) if dep_id else None)

    async def run(self) -> None:
        import asyncio

        interval = self.reconciler.settings.status_interval_s
        loop = asyncio.get_running_loop()
        next_resync = loop.time()
        while True:
            timeout = max(0.0, next_resync - loop.time())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
                await asyncio.sleep(0.05)  # coalesce bursts of events
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            dirty, self.dirty = self.dirty, set()
            full = loop.time() >= next_resync
            if full:
                next_resync = loop.time() + interval
            try:
                await self.sync(None if full else dirty)
            except Exception:  # the next round retries; never let the loop die
                log.exception("reconcile round failed")

    async def sync(self, only: set[tuple[str, str]] | None = None) -> int:
        """Reconcile all resources (or those of the marked deployments); returns how many statuses were written."""
        crs = []
        for plural in CR_PLURALS:
            for cr in self.cache.list(plural, None):
                ns = cr["metadata"]["namespace"]
                dep_id = deployment_id_of(cr)
                if only is None or (ns, "*") in only or (dep_id and (ns, label_value(dep_id)) in only):
                    crs.append((plural, cr))
        written = 0
        for plural, cr in sorted(crs, key=lambda item: creation_order(item[1])):
            current = self.cache.get(plural, cr["metadata"]["namespace"], cr["metadata"]["name"])
            if current is None or current["metadata"].get("uid") != cr["metadata"].get("uid"):
                continue  # gone meanwhile
            try:
                written += await self.sync_one(plural, current)
            except Exception:
                log.exception("reconcile of %s %s/%s failed", plural, cr["metadata"]["namespace"],
                              cr["metadata"]["name"])
        if only is None:
            await self.sweep()
        return written

    async def sync_one(self, plural: str, cr: dict[str, Any]) -> int:
        if cr["metadata"].get("deletionTimestamp"):
            await self.release(plural, cr)
            return 0
        applied, error = True, None
        try:
            found, changes = await self.reconciler.reconcile(plural, cr)
        except InfernetesError as exc:  # the API refused a write: retried next round, this generation unobserved
            found, changes, applied, error = await self.reconciler.assess(plural, cr), [], False, str(exc)
        for change in changes:
            await post_event(self.kube, cr, "Normal", "Applied", change)
        status = await self.reconciler.status(plural, cr, found, applied=applied)
        if error is not None:
            status["reason"] = f"applying the workload failed (retrying): {error}"
        await self.report(cr, found.problem or (("ApplyFailed", error) if error else None))
        await self.keep_finalizer(plural, cr, found)
        if not status_changed(cr.get("status"), status):
            return 0
        old = (cr.get("status") or {}).get("state")
        ns, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        result = await self.kube.patch(API_VERSION, plural, ns, name, {"status": status}, subresource="status")
        if isinstance(result, dict):
            self.cache.put(plural, result)
        if old and old != status["state"]:
            detail = status.get("reason") or status["allocations"] + " allocations ready"
            await post_event(self.kube, cr, "Warning" if status["state"] == "failed" else "Normal",
                             "StateChanged", f"{old} -> {status['state']}: {detail}")
        return 1

    async def report(self, cr: dict[str, Any], problem: tuple[str, str] | None) -> None:
        """One Warning event per distinct problem (not one per retry); none when the status already shows it."""
        uid = str(cr["metadata"].get("uid"))
        if problem is None:
            self.reported.pop(uid, None)
            return
        if self.reported.get(uid) == problem:
            return
        self.reported[uid] = problem
        shown = {c.get("type"): c for c in (cr.get("status") or {}).get("conditions") or []}.get("Ready") or {}
        if shown.get("reason") == problem[0] and shown.get("message") == problem[1]:
            return  # posted before a restart
        await post_event(self.kube, cr, "Warning", problem[0], problem[1])

    async def keep_finalizer(self, plural: str, cr: dict[str, Any], found: Assessment) -> None:
        """The finalizer only where it protects something: on a resource whose deployment other endpoints use.
        Anything else deletes at once, with or without a running operator."""
        meta = cr["metadata"]
        users = await self.reconciler.dependents(meta["namespace"], found.deployment.deployment_id, meta.get("uid")) \
            if found.deployment is not None and found.problem is None else []
        finalizers = list(meta.get("finalizers") or [])
        has = FINALIZER in finalizers
        if bool(users) == has and LEGACY_FINALIZER not in finalizers:
            return
        wanted = [f for f in finalizers if f not in (FINALIZER, LEGACY_FINALIZER)] + ([FINALIZER] if users else [])
        await self._set_finalizers(plural, cr, wanted)

    async def release(self, plural: str, cr: dict[str, Any]) -> None:
        """A resource being deleted: drop the finalizer once no endpoint uses its deployment (or forced)."""
        finalizers = list(cr["metadata"].get("finalizers") or [])
        if FINALIZER not in finalizers and LEGACY_FINALIZER not in finalizers:
            return
        blocker = await self.reconciler.deletion_blocker(plural, cr)
        if blocker:
            await self.report(cr, ("DeletionBlocked", blocker))
            return
        await self._set_finalizers(plural, cr, [f for f in finalizers if f not in (FINALIZER, LEGACY_FINALIZER)])

    async def _set_finalizers(self, plural: str, cr: dict[str, Any], finalizers: list[str]) -> None:
        meta = cr["metadata"]
        # resourceVersion makes it a compare-and-swap: finalizers others add meanwhile are never lost.
        result = await self.kube.patch(API_VERSION, plural, meta["namespace"], meta["name"], {
            "metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}})
        if isinstance(result, dict):
            self.cache.put(plural, result)

    async def sweep(self) -> int:
        """Delete children whose owner lives but no longer asks for them (e.g. a changed deployment id)."""
        live = {cr["metadata"].get("uid"): cr for plural in CR_PLURALS for cr in self.cache.list(plural, None)
                if not cr["metadata"].get("deletionTimestamp")}
        deleted = 0
        for plural in ("deployments", "services", "poddisruptionbudgets"):
            for child in self.cache.list(plural, None):
                owner = live.get(controller_uid(child))
                if owner is None:
                    continue  # no owner (garbage collection's job) or not ours
                wanted = own_deployment_id(owner)
                found = await self.reconciler.assess(
                    ENDPOINTS if owner.get("kind") == ENDPOINT_KIND else DEPLOYMENTS, owner)
                if wanted is not None and found.problem is None and \
                        workload_name(wanted) == child["metadata"]["name"]:
                    continue
                if wanted is not None and found.problem is not None and \
                        workload_name(wanted) == child["metadata"]["name"]:
                    continue  # the spec is refused for now: its running workload is not torn down for that
                meta = child["metadata"]
                log.info("deleting %s %s/%s: its owner no longer asks for it", plural, meta["namespace"], meta["name"])
                if await self.kube.delete(CHILD_KINDS[plural], plural, meta["namespace"], meta["name"]):
                    deleted += 1
                    await post_event(self.kube, owner, "Normal", "Deleted",
                                     f"{child.get('kind') or plural} {meta['name']} is no longer wanted")
        return deleted


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


__all__ = ["Reconciler", "Controller", "ClusterCache", "ClusterCatalog", "Assessment", "status_changed", "k8s_name"]
