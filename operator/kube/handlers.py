"""kopf handlers: thin, typed, one per concern; the logic lives in :class:`Reconciler`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import DEPLOYMENTS, ENDPOINTS, GROUP, LABEL_DEPLOYMENT, LABEL_MANAGED, MANAGER, VERSION
from .client import KubeConfig
from ..runtime.autoscaling import AutoscalerMetrics
from .autoscaling import ClusterAutoscaler
from .operator import Reconciler, StatusRefresher

FINALIZER = f"{GROUP}/protect-shared-deployment"


def _owns_deployment(spec: kopf.Spec, **_: Any) -> bool:
    """Only endpoints that own a deployment can be depended on, so only they get a finalizer."""
    return (spec.get("service_settings") or {}).get("model_id") is not None


def build_registry(reconciler: Reconciler, config: KubeConfig, namespaces: list[str] | None = None,
                   metrics: AutoscalerMetrics | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    refresher = StatusRefresher(reconciler, namespaces)
    autoscaler = ClusterAutoscaler(reconciler, namespaces, reconciler.settings.autoscaler(), metrics)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's own bookkeeping goes into status, never into the user's metadata (no GitOps drift).
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
        settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled")
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        settings.scanning.disabled = True

    @kopf.on.startup(registry=registry)
    async def start_status_loop(memo: kopf.Memo, **_: Any) -> None:
        import asyncio

        memo["status_loop"] = asyncio.create_task(refresher.run(), name="infernetes-status")
        memo["autoscaler_loop"] = asyncio.create_task(autoscaler.run(), name="infernetes-autoscaler")

    @kopf.on.cleanup(registry=registry)
    async def stop_status_loop(memo: kopf.Memo, **_: Any) -> None:
        for key in ("status_loop", "autoscaler_loop"):
            task = memo.get(key)
            if task is not None:
                task.cancel()

    # Workloads and pods change status: mark what depends on them (no finalizers: plain event handlers).
    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED: MANAGER}, registry=registry)
    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED: MANAGER}, registry=registry)
    def workload_event(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
        if namespace:
            refresher.mark(namespace, labels.get(LABEL_DEPLOYMENT))

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        if config.in_cluster:
            return kopf.login_with_service_account()  # re-reads rotated tokens
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ca_file,
            insecure=not config.verify,
            scheme="Bearer" if config.token() else None,
            token=config.token(),
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
            default_namespace=config.namespace,
        )

    for plural in (ENDPOINTS, DEPLOYMENTS):
        resource = (GROUP, VERSION, plural)

        @kopf.on.create(*resource, registry=registry)
        @kopf.on.update(*resource, registry=registry)
        @kopf.on.resume(*resource, registry=registry)
        async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, plural: str = plural,
                            **_: Any) -> None:
            found, changes = await reconciler.reconcile(plural, dict(body))
            for change in changes:
                kopf.info(body, reason="Applied", message=change)
            status = await reconciler.status(plural, dict(body), found)
            patch.status.update(status)
            refresher.mark(body["metadata"]["namespace"], None)  # endpoints reusing it see the change too
            if found.problem:
                reason, message = found.problem
                kopf.warn(body, reason=reason, message=message)
                if found.permanent:
                    raise kopf.PermanentError(message)
                raise kopf.TemporaryError(message, delay=reconciler.settings.retry_delay_s)

    @kopf.on.delete(GROUP, VERSION, ENDPOINTS, when=_owns_deployment, registry=registry)
    @kopf.on.delete(GROUP, VERSION, DEPLOYMENTS, registry=registry)
    async def protect(body: kopf.Body, resource: kopf.Resource, **_: Any) -> None:
        blocker = await reconciler.deletion_blocker(resource.plural, dict(body))
        if blocker:
            kopf.warn(body, reason="DeletionBlocked", message=blocker)
            raise kopf.TemporaryError(blocker, delay=reconciler.settings.retry_delay_s)
        # The workload goes with its owner (owner references): nothing else to clean up.

    return registry
