"""``infernetes operator`` and ``infernetes gateway``: the kopf operator, and the Elasticsearch REST
gateway backed by the CRs.

In a cluster they run as two Deployments (the chart's topology): the operator, leader-elected through
a Lease so that two replicas are safe, and the gateway, as many replicas as traffic needs, each serving
from its own watch caches. ``infernetes operator`` without ``--no-gateway`` still runs both in one
process (development, the plain manifests of old). kopf runs in its own thread and event loop (its
shutdown waits for every task of its loop); the gateway runs under uvicorn in the main thread and
owns the process signals.
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
from .gateway import KubeRuntime, KubeStore
from .handlers import build_registry
from .leader import LeaderElector, LeaseSettings
from .operator import Reconciler
from .settings import OperatorSettings
from .uploads import UploadsRoute, uploads_catalog

log = logging.getLogger("infernetes.operator")


def build_cluster_app(config: KubeConfig, namespace: str, settings: OperatorSettings,
                      gateway: GatewaySettings | None = None, *, poll_interval: float = 1.0,
                      metrics: AutoscalerMetrics | None = None):  # type: ignore[no-untyped-def]
    kube = Kube(config)
    catalog = uploads_catalog(settings)  # with the upload volume, when the settings name one (Eland)
    runtime = KubeRuntime(kube, namespace, settings, poll_interval=poll_interval)
    service = InferenceService(KubeStore(kube, namespace, catalog, settings.queue_capacity, view=runtime), runtime,
                               catalog, Limits(queue_capacity=settings.queue_capacity))
    app = create_app(service, gateway or GatewaySettings(cluster_name=f"infernetes-{namespace}"),
                     extra_registries=[metrics.registry] if metrics else None)
    app.add_middleware(UploadsRoute, catalog=catalog)  # worker pods pull uploaded models (worker credential)
    app.state.kube = kube
    return app


class LostLeadership(RuntimeError):
    """The Lease was not renewed in time: this replica stops, another one leads."""


class OperatorThread(threading.Thread):
    """The operator in its own thread: with ``lease`` set, it first waits to lead, and stops when it no longer does."""

    def __init__(self, config: KubeConfig, settings: OperatorSettings, namespaces: list[str],
                 liveness: str | None = None, metrics: AutoscalerMetrics | None = None,
                 lease: LeaseSettings | None = None) -> None:
        super().__init__(name="kopf", daemon=True)
        self.config, self.settings, self.namespaces, self.liveness = config, settings, namespaces, liveness
        self.metrics = metrics
        self.lease = lease
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.leading = threading.Event()
        self.error: BaseException | None = None
        self.registry_factory = build_registry  # tests wrap it to see what this replica reconciles

    async def _until_stopped(self) -> None:
        while not self.stop_flag.is_set():
            await asyncio.sleep(0.1)

    def run(self) -> None:
        import kopf

        async def main() -> None:
            kube = Kube(self.config)
            elector = LeaderElector(kube, self.lease) if self.lease else None
            keeper: asyncio.Task[None] | None = None
            try:
                if elector is not None:
                    acquire = asyncio.ensure_future(elector.acquire())
                    stopped = asyncio.ensure_future(self._until_stopped())
                    await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not acquire.done():
                        acquire.cancel()
                        return
                    stopped.cancel()
                    keeper = asyncio.ensure_future(elector.keep())
                    keeper.add_done_callback(lambda _: self.stop_flag.set())
                self.leading.set()
                registry = self.registry_factory(Reconciler(kube, self.settings), self.config,
                                                 self.namespaces or None, self.metrics)
                await kopf.operator(registry=registry, standalone=True, namespaces=self.namespaces,
                                    clusterwide=not self.namespaces, stop_flag=self.stop_flag,
                                    ready_flag=self.ready, liveness_endpoint=self.liveness)
                if elector is not None and elector.lost.is_set():
                    raise LostLeadership(f"lost the lease {self.lease.namespace}/{self.lease.name}")  # type: ignore[union-attr]
            finally:
                self.leading.clear()
                if keeper is not None:
                    keeper.cancel()
                    if not elector.lost.is_set():  # type: ignore[union-attr]
                        await elector.release()  # type: ignore[union-attr]
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


def serve_health(operator: OperatorThread, metrics: AutoscalerMetrics, port: int) -> None:
    """``/healthz`` (200 while the operator thread runs, leading or waiting for the Lease) and the
    autoscaler's ``/metrics``, on a daemon thread."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path == "/metrics":
                code, body, kind = 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                alive = operator.is_alive() and not operator.stop_flag.is_set()
                code, kind = (200 if alive else 503), "application/json"
                body = b'{"alive": %s, "leading": %s}' % (b"true" if alive else b"false",
                                                           b"true" if operator.leading.is_set() else b"false")
            else:
                code, body, kind = 404, b"{}", "application/json"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - the pod's own interface
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()


def _gateway_namespace(config: KubeConfig, namespaces: list[str]) -> str:
    import os

    return os.environ.get("INFERNETES_GATEWAY_NAMESPACE") or (
        namespaces[0] if namespaces else (config.namespace or "default"))


def _lease(config: KubeConfig, name: str | None, namespace: str | None) -> LeaseSettings | None:
    import os

    if not name:
        return None
    return LeaseSettings(name=name, namespace=namespace or os.environ.get("POD_NAMESPACE") or config.namespace or
                         "default")


def run(namespaces: list[str], *, host: str, port: int, gateway: bool, kubeconfig: str | None,
        config_path: Path | None, liveness_port: int | None, log_level: str, lease_name: str | None = None,
        lease_namespace: str | None = None, access_log: bool = False) -> int:
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = KubeConfig.load(kubeconfig)
    settings = OperatorSettings.load(config_path)
    lease = _lease(config, lease_name, lease_namespace)
    metrics = AutoscalerMetrics()
    # kopf serves liveness only while it runs, i.e. while leading: a standby replica answers it itself.
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port and lease is None else None
    operator = OperatorThread(config, settings, namespaces, liveness, metrics, lease=lease)
    operator.start()
    if liveness_port and lease is not None:
        serve_health(operator, metrics, liveness_port)
    try:
        if gateway:
            namespace = _gateway_namespace(config, namespaces)
            app = build_cluster_app(config, namespace, settings,
                                    GatewaySettings(cluster_name=f"infernetes-{namespace}", auth=gateway_auth()),
                                    metrics=metrics)
            uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                        timeout_graceful_shutdown=30)
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


def run_gateway(namespace: str | None, *, host: str, port: int, kubeconfig: str | None, config_path: Path | None,
                log_level: str, access_log: bool = False) -> int:
    """The gateway alone (its own Deployment): no operator, no leader election; any number of replicas. No access
    log unless asked (as `infernetes serve`): a line per request was 4% of the gateway's CPU under short-input
    load (py-spy, bench/cluster_overhead.py)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = KubeConfig.load(kubeconfig)
    settings = OperatorSettings.load(config_path)
    namespace = namespace or _gateway_namespace(config, [])
    app = build_cluster_app(config, namespace, settings,
                            GatewaySettings(cluster_name=f"infernetes-{namespace}", auth=gateway_auth()))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=30)
    return 0
