"""kopf handlers: thin, typed, one per concern; the logic lives in :class:`Reconciler`."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import GROUP, LABEL_DEPLOYMENT, LABEL_MANAGED, MANAGER, VERSION
from .client import KubeConfig
from ..runtime.autoscaling import AutoscalerMetrics
from .autoscaling import ClusterAutoscaler
from .operator import CHILD_KINDS, CR_PLURALS, LEGACY_FINALIZER, Controller, Reconciler, deployment_id_of


def build_registry(reconciler: Reconciler, config: KubeConfig, namespaces: list[str] | None = None,
                   metrics: AutoscalerMetrics | None = None) -> kopf.OperatorRegistry:
    """kopf watches the custom resources and, with a server-side label selector, only the Deployments,
    Services, PodDisruptionBudgets and pods the operator manages. Every event updates the shared cache
    and marks the deployment it concerns; the :class:`Controller` loop reconciles what is marked."""
    registry = kopf.OperatorRegistry()
    controller = Controller(reconciler, namespaces)
    cache = controller.cache
    autoscaler = ClusterAutoscaler(reconciler, namespaces, reconciler.settings.autoscaler(), metrics)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # No kopf handler needs a finalizer or progress bookkeeping: the Controller keeps its own finalizer,
        # only where one protects something; kopf removes its earlier one (LEGACY_FINALIZER) by itself.
        settings.persistence.finalizer = LEGACY_FINALIZER
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
        settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.last-handled")
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        settings.scanning.disabled = True
        for plural, api_version in CHILD_KINDS.items():  # server-side filtering: never every pod of a namespace
            group = api_version.rpartition("/")[0]
            settings.watching.label_selectors[(group, plural) if group else ("v1", plural)] = \
                f"{LABEL_MANAGED}={MANAGER}"

    @kopf.on.startup(registry=registry)
    async def start_loops(memo: kopf.Memo, **_: Any) -> None:
        import asyncio

        await cache.fill(reconciler.kube, namespaces)  # before any watch: the first reconcile sees everything
        memo["status_loop"] = asyncio.create_task(controller.run(), name="infernetes-reconcile")
        memo["autoscaler_loop"] = asyncio.create_task(autoscaler.run(), name="infernetes-autoscaler")

    @kopf.on.cleanup(registry=registry)
    async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
        for key in ("status_loop", "autoscaler_loop"):
            task = memo.get(key)
            if task is not None:
                task.cancel()

    warned: list[bool] = []

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # In a pod too: the API server from $KUBERNETES_SERVICE_HOST/PORT and the mounted token, as the official
        # client reads them (config.token() re-reads a rotated token, re-runs an expired exec plugin: kopf logs in
        # again on a 401 and at the expiration given here). Not kopf.login_with_service_account(): it needs
        # cluster DNS for https://kubernetes.default.svc (found by the e2e run on the box, where every in-cluster
        # login failed and the operator never reconciled).
        token = await config.token()
        if config.tls_server_name and not warned:
            warned.append(True)
            logging.getLogger("infernetes.kube").warning(
                "the kubeconfig sets tls-server-name [%s]: the operator's and the gateway's own calls use it, kopf's "
                "watches cannot (kopf has no such setting) and check the certificate against [%s]",
                config.tls_server_name, config.host)
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ca_file,
            insecure=not config.verify,
            scheme="Bearer" if token else None,
            token=token,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
            default_namespace=config.namespace,
            proxy_url=config.proxy,
            expiration=config.token_expiry(),
        )

    for cr_plural in CR_PLURALS:
        @kopf.on.event(GROUP, VERSION, cr_plural, registry=registry)
        def resource_event(body: kopf.Body, type: str | None, plural: str = cr_plural, **_: Any) -> None:
            obj = dict(body)
            old = cache.get(plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
            cache.put(plural, obj, deleted=type == "DELETED")
            controller.mark_resource(obj)
            if old is not None and deployment_id_of(old) != deployment_id_of(obj):
                controller.mark_resource(old)  # whoever shared the deployment it left

    for child_plural, api_version in CHILD_KINDS.items():
        group, _, version = api_version.rpartition("/")

        @kopf.on.event(group, version, child_plural, labels={LABEL_MANAGED: MANAGER}, registry=registry)
        def child_event(body: kopf.Body, type: str | None, labels: kopf.Labels, namespace: str | None,
                        plural: str = child_plural, **_: Any) -> None:
            cache.put(plural, dict(body), deleted=type == "DELETED")
            if namespace:
                controller.mark(namespace, labels.get(LABEL_DEPLOYMENT))

    return registry
