"""``infernetes operator``: the kopf operator, and the Elasticsearch REST gateway backed by the CRs.

kopf runs in its own thread and event loop (its shutdown waits for every task of its loop);
the gateway runs under uvicorn in the main thread and owns the process signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from pathlib import Path

from ..gateway import GatewaySettings, create_app
from ..runtime.autoscaling import AutoscalerMetrics
from ..service import InferenceService, Limits
from .client import Kube, KubeConfig
from .gateway import ClusterModels, KubeRuntime, KubeStore
from .handlers import build_registry
from .operator import Reconciler
from .settings import OperatorSettings

log = logging.getLogger("infernetes.operator")


def build_cluster_app(config: KubeConfig, namespace: str, settings: OperatorSettings,
                      gateway: GatewaySettings | None = None, *, poll_interval: float = 1.0,
                      metrics: AutoscalerMetrics | None = None):  # type: ignore[no-untyped-def]
    kube = Kube(config)
    catalog = ClusterModels(settings)
    runtime = KubeRuntime(kube, namespace, settings, poll_interval=poll_interval)
    service = InferenceService(KubeStore(kube, namespace, catalog, settings.queue_capacity), runtime, catalog,
                               Limits(queue_capacity=settings.queue_capacity))
    app = create_app(service, gateway or GatewaySettings(cluster_name=f"infernetes-{namespace}"),
                     extra_registries=[metrics.registry] if metrics else None)
    app.state.kube = kube
    return app


class OperatorThread(threading.Thread):
    def __init__(self, config: KubeConfig, settings: OperatorSettings, namespaces: list[str],
                 liveness: str | None = None, metrics: AutoscalerMetrics | None = None) -> None:
        super().__init__(name="kopf", daemon=True)
        self.config, self.settings, self.namespaces, self.liveness = config, settings, namespaces, liveness
        self.metrics = metrics
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        import kopf

        async def main() -> None:
            kube = Kube(self.config)
            try:
                registry = build_registry(Reconciler(kube, self.settings), self.config, self.namespaces or None,
                                          self.metrics)
                await kopf.operator(registry=registry, standalone=True, namespaces=self.namespaces,
                                    clusterwide=not self.namespaces, stop_flag=self.stop_flag,
                                    ready_flag=self.ready, liveness_endpoint=self.liveness)
            finally:
                await kube.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
            log.exception("the operator stopped")


def gateway_auth():  # type: ignore[no-untyped-def]
    """API keys from the mounted Secret (INFERNETES_API_KEYS_FILE); INFERNETES_AUTH=off turns them off."""
    import os

    from ..auth import Authenticator, KeyFile

    if os.environ.get("INFERNETES_AUTH", "on").lower() in ("off", "false", "0"):
        log.warning("API keys are off: anyone who reaches the gateway can manage endpoints")
        return None
    path = os.environ.get("INFERNETES_API_KEYS_FILE")
    if not path:
        log.error("API keys are on and INFERNETES_API_KEYS_FILE is not set: every request will get 401")
        return Authenticator(KeyFile(Path("/nonexistent/api-keys.json")))
    return Authenticator(KeyFile(Path(path)))


def run(namespaces: list[str], *, host: str, port: int, gateway: bool, kubeconfig: str | None,
        config_path: Path | None, liveness_port: int | None, log_level: str) -> int:
    import os

    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = KubeConfig.load(kubeconfig)
    settings = OperatorSettings.load(config_path)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    metrics = AutoscalerMetrics()
    operator = OperatorThread(config, settings, namespaces, liveness, metrics)
    operator.start()
    try:
        if gateway:
            namespace = os.environ.get("INFERNETES_GATEWAY_NAMESPACE") or (
                namespaces[0] if namespaces else (config.namespace or "default"))
            app = build_cluster_app(config, namespace, settings,
                                    GatewaySettings(cluster_name=f"infernetes-{namespace}", auth=gateway_auth()),
                                    metrics=metrics)
            uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)
        else:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(1.0):
                if not operator.is_alive():
                    break
    finally:
        operator.stop_flag.set()
        operator.join(timeout=60)
    return 1 if operator.error else 0
