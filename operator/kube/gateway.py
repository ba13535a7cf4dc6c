"""The Elasticsearch REST API in a cluster: custom resources are the store, pods the allocations.

``PUT _inference/...`` creates an InferenceEndpoint (mapping Elasticsearch ids to Kubernetes names
and back), ``_start`` a ModelDeployment; what ``kubectl apply`` creates is visible through the API
and the other way round. Inference goes straight to the ready worker pods (least busy first,
retried once on another pod if one dies), found by label and refreshed every second.
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

    def __init__(self, kube: Kube, namespace: str, catalog: ClusterModels, queue_capacity: int = 1024) -> None:
        self.kube = kube
        self.namespace = namespace
        self.catalog = catalog
        self.queue_capacity = queue_capacity

    async def _endpoint_cr(self, inference_id: str) -> dict[str, Any] | None:
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

    async def get_endpoint(self, inference_id: str) -> Endpoint | None:
        cr = await self._endpoint_cr(inference_id)
        return self._endpoint(cr) if cr else None

    async def list_endpoints(self) -> list[Endpoint]:
        crs = await self.kube.list(API_VERSION, ENDPOINTS, self.namespace)
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

    async def replace_endpoint(self, endpoint: Endpoint) -> None:
        cr = await self._endpoint_cr(endpoint.inference_id)
        if cr is None:
            raise ResourceNotFound(f"Inference endpoint not found [{endpoint.inference_id}]")
        new_spec = endpoint_to_cr(endpoint, self.namespace)["spec"]
        await self.kube.patch(API_VERSION, ENDPOINTS, self.namespace, cr["metadata"]["name"],
                              {"spec": _merge_patch(cr.get("spec") or {}, new_spec)})

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        cr = await find_owner(self.kube, self.namespace, deployment_id)
        return self._deployment(cr) if cr else None

    async def list_deployments(self) -> list[Deployment]:
        out = []
        for plural, kind in ((DEPLOYMENTS, DEPLOYMENT_KIND), (ENDPOINTS, ENDPOINT_KIND)):
            for cr in await self.kube.list(API_VERSION, plural, self.namespace):
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
        self.poll_interval = poll_interval
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
        self._held: dict[str, int] = {}

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="infernetes-kube-runtime")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # keep serving with the last view
                log.exception("could not refresh the cluster view")

    async def refresh(self) -> None:
        owners: dict[str, dict[str, Any]] = {}
        for plural, kind in ((DEPLOYMENTS, DEPLOYMENT_KIND), (ENDPOINTS, ENDPOINT_KIND)):
            for cr in await self.kube.list(API_VERSION, plural, self.namespace):
                cr = {**cr, "kind": kind}
                dep_id = own_deployment_id(cr)
                if dep_id:
                    owners.setdefault(dep_id, cr)
        pods: dict[str, list[dict[str, Any]]] = {}
        for pod in await self.kube.list("v1", "pods", self.namespace, f"{LABEL_MANAGED}={MANAGER}"):
            label = (pod["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
            if label:
                pods.setdefault(label, []).append(pod)
        self._owners, self._pods = owners, pods
        self._fresh.set()
        self._fresh = asyncio.Event()

    def _pod_list(self, deployment_id: str) -> list[dict[str, Any]]:
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
        await self.refresh()  # the resource was just written; the operator does the rest

    async def remove(self, deployment_id: str) -> None:
        self._owners.pop(deployment_id, None)

    async def scale(self, deployment_id: str, allocations: int) -> None:
        """The operator's autoscaler scales deployments in a cluster; the gateway only wakes ones at zero."""

    def status(self, deployment_id: str) -> DeploymentStatus | None:
        owner = self._owners.get(deployment_id)
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
            await self.refresh()
            status = self.status(deployment_id)
            if status is not None:
                done = status.state == "failed" or (
                    status.ready >= max(status.target, 1) if fully else status.state == "started" and
                    (status.ready > 0 or status.target == 0))
                if done or time.monotonic() >= deadline:
                    return status
            elif time.monotonic() >= deadline:
                return DeploymentStatus(deployment_id, target=1)
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

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
            owner = self._owners.get(deployment_id)
            if status.target == 0 and owner is not None:
                from .autoscaling import scale_from_zero

                await scale_from_zero(self.kube, self.namespace, deployment_id, owner,
                                      ENDPOINTS if owner["kind"] == ENDPOINT_KIND else DEPLOYMENTS)
            deadline = time.monotonic() + timeout
            while not self.ready_urls(deployment_id) and time.monotonic() < deadline:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._fresh.wait(), max(0.05, deadline - time.monotonic()))
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
