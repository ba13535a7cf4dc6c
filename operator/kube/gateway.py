"""The Elasticsearch REST API in a cluster: custom resources are the store, pods the allocations.

``PUT _inference/...`` creates an InferenceEndpoint (mapping Elasticsearch ids to Kubernetes names
and back), ``_start`` a ModelDeployment; what ``kubectl apply`` creates is visible through the API
and the other way round. Inference goes straight to the ready worker pods (least busy first,
retried once on another pod if one dies), found by label. Everything is read from watch caches
(:mod:`.watchcache`: one LIST at start, then one WATCH per kind), never listed per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import httpx

from ...worker.config import AUTH_TOKEN_ENV
from ...worker.download import BUILTINS, builtin, canonical_id
from ...worker.modelstore import ModelInfo
from ..errors import (
    Conflict,
    InfernetesError,
    ResourceAlreadyExists,
    ResourceNotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from ..records import Deployment, Endpoint
from ..runtime import AllocationStatus, DeploymentStatus
from ..runtime.router import Router
from . import API_VERSION, DEPLOYMENT_KIND, DEPLOYMENTS, ENDPOINT_KIND, ENDPOINTS, LABEL_DEPLOYMENT, LABEL_MANAGED, MANAGER
from .client import Kube
from .names import k8s_name, label_value
from .operator import ClusterCatalog
from .resources import (
    deployment_from_cr,
    deployment_to_cr,
    endpoint_from_cr,
    endpoint_to_cr,
    find_owner,
    own_deployment_id,
)
from .settings import DATA_DIR, OperatorSettings
from .watchcache import WatchCache

log = logging.getLogger("infernetes.gateway.kube")


class ClusterModels(ClusterCatalog):
    """The catalog the service sees in a cluster: built-ins and declared models, downloaded by pods."""

    def get(self, model_id: str) -> ModelInfo | None:
        return None  # nothing is local to the gateway: pods pull what they serve

    def downloadable(self, model_id: str) -> bool:
        return self.task_of(model_id) is not None

    def list(self) -> list[ModelInfo]:
        ids = sorted(set(BUILTINS) | set(self.settings.models))
        return [ModelInfo(model_id=m, task_type=self.task_of(m) or "", kind="", path=Path(DATA_DIR) / "models" / m,
                          size_bytes=self.size_of(m) or 0, source=self._source(m)) for m in ids]

    def _source(self, model_id: str) -> str:
        spec = builtin(model_id)
        if spec is not None:
            return f"built-in, downloaded by pods from {spec.repo_id}"
        return f"declared in the operator settings: {self.settings.models[model_id].repo}"

    def resolve(self, model_id: str) -> ModelInfo:
        raise ResourceNotFound(
            f"Could not find trained model [{model_id}]: it is neither a built-in model nor declared in the "
            "operator's models settings (the chart's `models` value)")

    def check(self, model_id: str, task_type: str, inference_id: str) -> ModelInfo | None:
        task = self.task_of(model_id)
        if task is None:
            self.resolve(model_id)
        if task != task_type:
            from ..errors import BadRequest

            raise BadRequest(
                f"Model [{model_id}] serves the [{task}] task and cannot be used for the [{task_type}] task; "
                f"use PUT _inference/{task}/{inference_id}")
        return None


class KubeStore:
    """:class:`~infernetes.operator.store.Store` over InferenceEndpoint and ModelDeployment resources."""

    def __init__(self, kube: Kube, namespace: str, catalog: ClusterModels, queue_capacity: int = 1024,
                 view: KubeRuntime | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.catalog = catalog
        self.queue_capacity = queue_capacity
        # Reads come from the runtime's watch caches when it has them (writes always go to the API server).
        self.view = view

    async def _crs(self, plural: str) -> list[dict[str, Any]]:
        if self.view is not None:
            return self.view.custom_resources(plural)
        return await self.kube.list(API_VERSION, plural, self.namespace)

    async def _owner(self, deployment_id: str) -> dict[str, Any] | None:
        if self.view is not None:
            return self.view.owner(deployment_id)
        return await find_owner(self.kube, self.namespace, deployment_id)

    async def _endpoint_cr(self, inference_id: str) -> dict[str, Any] | None:
        if self.view is not None:
            cr = self.view.custom_resource(ENDPOINTS, k8s_name(inference_id))
        else:
            cr = await self.kube.get(API_VERSION, ENDPOINTS, self.namespace, k8s_name(inference_id))
        if cr is None or ((cr.get("spec") or {}).get("inference_id") or cr["metadata"]["name"]) != inference_id:
            return None
        return {**cr, "kind": ENDPOINT_KIND}

    def _endpoint(self, cr: dict[str, Any]) -> Endpoint:
        try:
            return endpoint_from_cr(cr, self.queue_capacity)[0]
        except InfernetesError:  # written with kubectl and invalid: still listed, with its raw spec
            spec = dict(cr.get("spec") or {})
            inference_id = spec.pop("inference_id", None) or cr["metadata"]["name"]
            task = spec.pop("task_type", "")
            ss = spec.get("service_settings") or {}
            return Endpoint(inference_id, task, ss.get("deployment_id") or inference_id, spec)

    def _deployment(self, cr: dict[str, Any]) -> Deployment | None:
        try:
            if cr["kind"] == DEPLOYMENT_KIND:
                dep = deployment_from_cr(cr, self.queue_capacity)
                return dep.with_(task_type=self.catalog.task_of(dep.model_id) or "")
            return endpoint_from_cr(cr, self.queue_capacity)[1]
        except InfernetesError:
            return None

    async def create(self, endpoint: Endpoint | None, deployment: Deployment | None) -> None:
        if endpoint is not None and await self._endpoint_cr(endpoint.inference_id) is not None:
            raise ResourceAlreadyExists(f"Inference endpoint [{endpoint.inference_id}] already exists")
        if deployment is not None and await find_owner(self.kube, self.namespace, deployment.deployment_id):
            raise ResourceAlreadyExists(
                f"Could not start model deployment because an existing deployment with the same id "
                f"[{deployment.deployment_id}] exists")
        if endpoint is not None and deployment is None and \
                await find_owner(self.kube, self.namespace, endpoint.deployment_id) is None:
            raise ResourceNotFound(f"Could not find deployment [{endpoint.deployment_id}]")
        body = endpoint_to_cr(endpoint, self.namespace) if endpoint is not None else \
            deployment_to_cr(deployment, self.namespace)  # type: ignore[arg-type]
        plural = ENDPOINTS if endpoint is not None else DEPLOYMENTS
        try:
            await self.kube.create(API_VERSION, plural, self.namespace, body)
        except Conflict:
            what = f"Inference endpoint [{endpoint.inference_id}]" if endpoint else \
                f"Model deployment [{deployment.deployment_id}]"  # type: ignore[union-attr]
            raise ResourceAlreadyExists(f"{what} already exists (a resource named "
                                        f"[{body['metadata']['name']}] exists in namespace [{self.namespace}])") from None
        if self.view is not None:  # read your writes: the next GET is answered from the watch
            await self.view.settle(lambda: self.view.custom_resource(plural, body["metadata"]["name"]) is not None)

    async def get_endpoint(self, inference_id: str) -> Endpoint | None:
        cr = await self._endpoint_cr(inference_id)
        return self._endpoint(cr) if cr else None

    async def list_endpoints(self) -> list[Endpoint]:
        crs = await self._crs(ENDPOINTS)
        return sorted((self._endpoint({**cr, "kind": ENDPOINT_KIND}) for cr in crs), key=lambda e: e.inference_id)

    async def delete_endpoint(self, inference_id: str, *, with_deployment: bool) -> None:
        cr = await self._endpoint_cr(inference_id)
        if cr is None:
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        # The API asked for it (force included): the operator's deletion guard must not hold it.
        from . import ANNOTATION_FORCE_DELETE

        await self.kube.patch(API_VERSION, ENDPOINTS, self.namespace, cr["metadata"]["name"],
                              {"metadata": {"annotations": {ANNOTATION_FORCE_DELETE: "true"}}})
        await self.kube.delete(API_VERSION, ENDPOINTS, self.namespace, cr["metadata"]["name"])
        if self.view is not None:
            uid = cr["metadata"].get("uid")
            await self.view.settle(lambda: (self.view.custom_resource(ENDPOINTS, cr["metadata"]["name"]) or {}).get(
                "metadata", {}).get("uid") != uid or bool(
                self.view.custom_resource(ENDPOINTS, cr["metadata"]["name"])["metadata"].get("deletionTimestamp")))

    async def replace_endpoint(self, endpoint: Endpoint) -> None:
        cr = await self._endpoint_cr(endpoint.inference_id)
        if cr is None:
            raise ResourceNotFound(f"Inference endpoint not found [{endpoint.inference_id}]")
        new_spec = endpoint_to_cr(endpoint, self.namespace)["spec"]
        if (cr.get("spec") or {}).get("placement") is not None:  # Kubernetes-only: the ES body never carries it
            new_spec["placement"] = cr["spec"]["placement"]
        await self.kube.patch(API_VERSION, ENDPOINTS, self.namespace, cr["metadata"]["name"],
                              {"spec": _merge_patch(cr.get("spec") or {}, new_spec)})

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        cr = await self._owner(deployment_id)
        return self._deployment(cr) if cr else None

    async def list_deployments(self) -> list[Deployment]:
        out = []
        for plural, kind in ((DEPLOYMENTS, DEPLOYMENT_KIND), (ENDPOINTS, ENDPOINT_KIND)):
            for cr in await self._crs(plural):
                cr = {**cr, "kind": kind}
                if own_deployment_id(cr) and (dep := self._deployment(cr)) is not None:
                    out.append(dep)
        return sorted(out, key=lambda d: d.deployment_id)

    async def update_deployment(self, deployment: Deployment) -> None:
        cr = await find_owner(self.kube, self.namespace, deployment.deployment_id)
        if cr is None:
            raise ResourceNotFound(f"Could not find deployment [{deployment.deployment_id}]")
        spec = cr.get("spec") or {}
        if cr["kind"] == DEPLOYMENT_KIND:
            new = {**spec, "number_of_allocations": deployment.num_allocations,
                   "adaptive_allocations": deployment.adaptive}
            plural = DEPLOYMENTS
        else:
            ss = {**(spec.get("service_settings") or {}), "num_allocations": deployment.num_allocations,
                  "adaptive_allocations": deployment.adaptive}
            new = {**spec, "service_settings": ss}
            plural = ENDPOINTS
        new = _drop_none(new)
        await self.kube.patch(API_VERSION, plural, self.namespace, cr["metadata"]["name"],
                              {"spec": _merge_patch(spec, new)})

    async def delete_deployment(self, deployment_id: str) -> None:
        cr = await find_owner(self.kube, self.namespace, deployment_id)
        if cr is not None and cr["kind"] == DEPLOYMENT_KIND:
            from . import ANNOTATION_FORCE_DELETE

            await self.kube.patch(API_VERSION, DEPLOYMENTS, self.namespace, cr["metadata"]["name"],
                                  {"metadata": {"annotations": {ANNOTATION_FORCE_DELETE: "true"}}})
            await self.kube.delete(API_VERSION, DEPLOYMENTS, self.namespace, cr["metadata"]["name"])


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new`` (removed keys become null)."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            sub = _merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old.get(key) != value:
            patch[key] = value
    return patch


class KubeRuntime:
    """:class:`~infernetes.operator.runtime.Runtime` over what the operator runs: pods serve, CRs report."""

    def __init__(self, kube: Kube, namespace: str, settings: OperatorSettings, *, poll_interval: float = 1.0,
                 hold_limit: int = 256) -> None:
        self.kube = kube
        self.namespace = namespace
        self.settings = settings
        self.poll_interval = poll_interval  # the pause before a dropped watch is resumed
        self.hold_limit = hold_limit
        # The credential worker pods demand (OperatorSettings.worker_credential_secret), from the same Secret.
        credential = os.environ.get(AUTH_TOKEN_ENV) or None
        self.router = Router(credential=credential)
        self._probe = httpx.AsyncClient(timeout=2.0, trust_env=False,
                                        headers={"Authorization": f"Bearer {credential}"} if credential else None)
        self._owners: dict[str, dict[str, Any]] = {}  # deployment id -> the CR that provides it
        self._pods: dict[str, list[dict[str, Any]]] = {}  # deployment label -> its pods
        self._task: asyncio.Task[None] | None = None
        self._fresh = asyncio.Event()
        self._stale = True
        self._held: dict[str, int] = {}
        # Everything the gateway serves comes from these watches (one stream per kind, never a LIST per request).
        self.caches = [
            WatchCache(kube, API_VERSION, DEPLOYMENTS, namespace, kind=DEPLOYMENT_KIND, on_change=self._changed,
                       retry_s=poll_interval),
            WatchCache(kube, API_VERSION, ENDPOINTS, namespace, kind=ENDPOINT_KIND, on_change=self._changed,
                       retry_s=poll_interval),
            WatchCache(kube, "v1", "pods", namespace, f"{LABEL_MANAGED}={MANAGER}", on_change=self._changed,
                       retry_s=poll_interval),
        ]

    async def start(self) -> None:
        for cache in self.caches:
            await cache.start()
        self._rebuild()
        self._task = asyncio.create_task(self._keep_demand_visible(), name="infernetes-demand")

    def _changed(self) -> None:
        self._stale = True
        self._fresh.set()
        self._fresh = asyncio.Event()

    def _rebuild(self) -> None:
        """Owners and pods by deployment, from the watch caches (no API call)."""
        if not self._stale:
            return
        self._stale = False
        candidates: dict[str, list[dict[str, Any]]] = {}
        for cache in self.caches[:2]:
            for cr in cache.items():
                dep_id = own_deployment_id(cr)
                if dep_id:
                    candidates.setdefault(dep_id, []).append(cr)
        # The earliest resource owns a shared deployment id (as the operator decides), whatever the list order.
        self._owners = {d: min(crs, key=lambda c: (c["metadata"].get("creationTimestamp") or "",
                                                   c["metadata"]["name"])) for d, crs in candidates.items()}
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in self.caches[2].items():
            label = (pod["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
            if label:
                pods.setdefault(label, []).append(pod)
        self._pods = pods

    async def refresh(self) -> None:
        """The view as the watches last saw it (kept for callers that used to poll)."""
        self._stale = True
        self._rebuild()

    async def settle(self, done: Any, timeout: float = 5.0) -> bool:
        """Wait until the watches show what a write just did (``done()`` true), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._rebuild()
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._fresh.wait(), max(0.01, deadline - time.monotonic()))

    def custom_resources(self, plural: str) -> list[dict[str, Any]]:
        return self.caches[0 if plural == DEPLOYMENTS else 1].items()

    def custom_resource(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.caches[0 if plural == DEPLOYMENTS else 1].get(self.namespace, name)

    def owner(self, deployment_id: str) -> dict[str, Any] | None:
        self._rebuild()
        return self._owners.get(deployment_id)

    async def _keep_demand_visible(self) -> None:
        """While requests wait for a first allocation, re-stamp the demand the autoscaler reads."""
        from .autoscaling import demand_refresh_s

        while True:
            await asyncio.sleep(demand_refresh_s(self.settings))
            for deployment_id, held in list(self._held.items()):
                if held > 0:
                    try:
                        await self._record_demand(deployment_id, held)
                    except Exception:  # the next round retries
                        log.exception("could not record the demand of deployment [%s]", deployment_id)

    async def _record_demand(self, deployment_id: str, held: int) -> None:
        from .autoscaling import record_demand

        owner = self.owner(deployment_id)
        if owner is not None:
            await record_demand(self.kube, self.namespace, deployment_id, held, owner,
                                ENDPOINTS if owner["kind"] == ENDPOINT_KIND else DEPLOYMENTS)

    def _pod_list(self, deployment_id: str) -> list[dict[str, Any]]:
        self._rebuild()
        return self._pods.get(label_value(deployment_id), [])

    @staticmethod
    def _ready(pod: dict[str, Any]) -> bool:
        if pod["metadata"].get("deletionTimestamp"):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (pod.get("status") or {}).get("conditions", []) or [])

    def _url(self, pod: dict[str, Any]) -> str | None:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        port = self.settings.worker_port
        for c in (pod.get("spec") or {}).get("containers", []):
            for p in c.get("ports", []) or []:
                if p.get("name") == "http":
                    port = p["containerPort"]
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{port}"

    def ready_urls(self, deployment_id: str) -> list[str]:
        return [u for p in self._pod_list(deployment_id) if self._ready(p) and (u := self._url(p))]

    # -- Runtime surface --------------------------------------------------------------------------

    async def apply(self, deployment: Deployment, allocations: int | None = None) -> None:
        # The resource was just written (the operator does the rest): answer once the watch shows it.
        await self.settle(lambda: deployment.deployment_id in self._owners)

    async def remove(self, deployment_id: str) -> None:
        self._owners.pop(deployment_id, None)

    async def scale(self, deployment_id: str, allocations: int) -> None:
        """The operator's autoscaler scales deployments in a cluster; the gateway only wakes ones at zero."""

    def status(self, deployment_id: str) -> DeploymentStatus | None:
        owner = self.owner(deployment_id)
        if owner is None:
            return None
        st = owner.get("status") or {}
        allocations = [
            AllocationStatus(allocation_id=p["metadata"]["name"], state="started" if self._ready(p) else "starting",
                             url=self._url(p))
            for p in self._pod_list(deployment_id)
        ]
        failure = st.get("reason") if st.get("state") == "failed" else None
        download = None
        if any(c.get("type") == "Ready" and c.get("reason") == "ModelDownloading" for c in st.get("conditions", [])):
            download = {"model_id": st.get("model_id"), "state": "downloading"}
        started = owner["metadata"].get("creationTimestamp")
        return DeploymentStatus(
            deployment_id=deployment_id,
            target=int(st.get("target_allocation_count") or 0),
            allocations=allocations,
            failure=failure,
            stopping=bool(owner["metadata"].get("deletionTimestamp")),
            started_at=_epoch(started),
            download=download,
        )

    async def wait(self, deployment_id: str, timeout: float, *, fully: bool = True) -> DeploymentStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(deployment_id)
            if status is not None:
                done = status.state == "failed" or (
                    status.ready >= max(status.target, 1) if fully else status.state == "started" and
                    (status.ready > 0 or status.target == 0))
                if done or time.monotonic() >= deadline:
                    return status
            elif time.monotonic() >= deadline:
                return DeploymentStatus(deployment_id, target=1)
            fresh = self._fresh
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fresh.wait(), max(0.01, min(5.0, deadline - time.monotonic())))

    async def node_stats(self, deployment_id: str) -> list[dict[str, Any]]:
        async def one(pod: dict[str, Any]) -> dict[str, Any]:
            base = {"allocation_id": pod["metadata"]["name"], "state": "started" if self._ready(pod) else "starting",
                    "restarts": sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get(
                        "containerStatuses", []) or [])}
            url = self._url(pod)
            if not self._ready(pod) or url is None:
                return base
            try:
                resp = await self._probe.get(url + "/stats", timeout=1.0)
                return {**resp.json(), **base}
            except (httpx.HTTPError, ValueError):
                return base

        return list(await asyncio.gather(*(one(p) for p in self._pod_list(deployment_id))))

    async def infer(self, deployment_id: str, payload: bytes, timeout: float,
                    path: str = "/infer") -> tuple[int, bytes, dict[str, str]]:
        urls = self.ready_urls(deployment_id)
        if not urls:
            urls = await self._hold(deployment_id, timeout)
        return await self.router.forward(urls, payload, timeout, what=f"deployment [{deployment_id}]", path=path)

    async def _hold(self, deployment_id: str, timeout: float) -> list[str]:
        status = self.status(deployment_id)
        if status is None:
            raise ResourceNotFound(f"Could not find deployment [{deployment_id}]")
        if status.state == "failed":
            raise ServiceUnavailable(f"deployment [{deployment_id}] failed: {status.failure}")
        held = self._held.get(deployment_id, 0)
        if held >= self.hold_limit:
            raise TooManyRequests(f"deployment [{deployment_id}] has no ready allocation and already holds {held} "
                                  "requests; retry later", retry_after=5)
        self._held[deployment_id] = held + 1
        try:
            if held == 0:  # the first one waiting: make the demand visible now (the heartbeat keeps it fresh)
                try:
                    await self._record_demand(deployment_id, 1)
                except Exception:  # the heartbeat retries; the request still waits for a pod
                    log.exception("could not record the demand of deployment [%s]", deployment_id)
            deadline = time.monotonic() + timeout
            while not self.ready_urls(deployment_id) and time.monotonic() < deadline:
                fresh = self._fresh
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fresh.wait(), max(0.05, deadline - time.monotonic()))
        finally:
            self._held[deployment_id] -= 1
        urls = self.ready_urls(deployment_id)
        if not urls:
            raise TooManyRequests(f"deployment [{deployment_id}] has no ready allocation yet (state "
                                  f"[{status.state}]); retry later", retry_after=5)
        return urls

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for cache in self.caches:
            await cache.close()
        await self.router.close()
        await self._probe.aclose()


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["ClusterModels", "KubeStore", "KubeRuntime", "canonical_id"]
