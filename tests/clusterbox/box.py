"""`ClusterBox`: the API server run on its own event loop in a thread, with what tests need
around it — tokens, a kubeconfig for kubectl, fault injection, compaction."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
import tempfile
import threading
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import httpx
import yaml
from aiohttp import web

from .controllers import NODE_NAME, Controllers
from .kubelet import Kubelet
from .routes import Routes
from .rbac import User
from .server import ApiServer
from .tls import self_signed, server_context


class ClusterBox:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 5.0, history: int = 10_000,
                 owner_reference_enforcement: bool = True, kubelet: bool = False, images: Mapping[str, Any] | None = None,
                 backoff_base: float = 10.0, controllers: bool = True, node_cpu: str = "2", node_memory: str = "8Gi"):
        """kubelet: run the pods bound to the box's node as processes (kubelet.py); images: image
        name -> kubelet.Image or a venv's bin folder (default: the project's image -> .venv);
        backoff_base: the first restart and image-pull back-off in seconds (10 in Kubernetes);
        controllers: run the Deployment, ReplicaSet, scheduler and EndpointSlice controllers
        (controllers.py) with one Node of node_cpu and node_memory allocatable."""
        self.host = host
        self.port = port or _free_port(host)
        self.server = ApiServer(secrets.token_urlsafe(24), bookmark_interval, history, owner_reference_enforcement)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="clusterbox-")
        self.ca_path, self._key_path = self_signed(Path(self._tmp.name), host)
        self._kubelet_options = {"images": images, "backoff_base": backoff_base} if kubelet else None
        self.kubelet: Kubelet | None = None
        self.controllers = Controllers(self.server, NODE_NAME, node_cpu, node_memory) if controllers else None
        self._controllers_task: asyncio.Task[None] | None = None

    @property
    def node_name(self) -> str:
        """The box's one Node, where the scheduler binds pods (and the kubelet runs them)."""
        return NODE_NAME

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def admin_token(self) -> str:
        return self.server.admin_token

    @property
    def faults(self) -> Any:
        return self.server.faults

    def start(self) -> ClusterBox:
        self._thread = threading.Thread(target=self._run, name="clusterbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the cluster box did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self.server.loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._runner = web.AppRunner(Routes(self.server).app(), handle_signals=False, shutdown_timeout=1)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port, ssl_context=server_context(self.ca_path, self._key_path)).start()
            self._gc = loop.create_task(self.server.gc_loop())
            if self.controllers is not None:
                self._controllers_task = loop.create_task(self.controllers.run())
            if self._kubelet_options is not None:
                self.kubelet = Kubelet(self.server, Path(self._tmp.name) / "kubelet", getattr(self, "node_name", "box-node"),
                                       token_for=self.token_for_async, ca_path=self.ca_path, api_host=self.host,
                                       api_port=self.port, **self._kubelet_options)
                self.server.kubelet = self.kubelet  # type: ignore[attr-defined]  # GET pods/{name}/log
                self.kubelet.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self.kubelet is not None:
                await self.kubelet.stop()  # every pod's processes killed before the box is gone
            self.server.drop_watches(None)
            self._gc.cancel()
            if self._controllers_task is not None:
                self._controllers_task.cancel()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._tmp.cleanup()

    def __enter__(self) -> ClusterBox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- what tests use ----

    def token_for(self, namespace: str, service_account: str) -> str:
        """A bearer token authenticating as the ServiceAccount (as a projected token would)."""
        token = secrets.token_urlsafe(24)
        self.server.call(self.server.tokens.__setitem__, token, User.service_account(namespace, service_account))
        return token

    def token_for_async(self, namespace: str, service_account: str) -> str:
        """token_for, from the box's own loop (the kubelet mounting a pod's token)."""
        token = secrets.token_urlsafe(24)
        self.server.tokens[token] = User.service_account(namespace, service_account)
        return token

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token or self.admin_token}"}, timeout=30,
                            verify=str(self.ca_path), **kw)

    def compact(self) -> int:
        return self.server.call(self.server.compact)

    def requests(self) -> list[tuple[str, str | None, str]]:
        return self.server.call(lambda: list(self.server.requests))

    def write_kubeconfig(self, path: Path, token: str | None = None, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "clusterbox", "preferences": {},
            "clusters": [{"name": "clusterbox", "cluster": {"server": self.url,
                                                         "certificate-authority-data": base64.b64encode(self.ca_path.read_bytes()).decode()}}],
            "users": [{"name": "clusterbox", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "clusterbox", "context": {"cluster": "clusterbox", "user": "clusterbox", "namespace": namespace}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
