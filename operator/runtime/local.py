"""The embedded runtime: each allocation is a worker process on this machine.

The runtime keeps one listening socket per allocation on 127.0.0.1 and hands it to the worker
process, so the port survives worker restarts and workers never listen beyond loopback. A
supervisor task per allocation starts the worker, waits for ``/readyz``, and restarts it with
back-off when it dies; a worker whose model cannot load (exit code 3) marks the allocation
failed instead of crash-looping. Scaling down stops the newest allocations with SIGTERM, which
lets them finish the requests they have accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ...worker.download import PLATFORM_SUFFIX, Progress, canonical_id
from ...worker.modelstore import ModelInfo
from ...worker.config import AUTH_TOKEN_ENV
from ...worker.hop import usable_path
from ...worker.server import EXIT_MODEL_FAILED
from ..autoscaler import AutoscalerSettings
from ..capacity import Capacity
from ..catalog import ModelCatalog
from ..errors import ResourceNotFound, ServiceUnavailable, TooManyRequests
from ..locks import KeyedLocks
from ..records import Deployment
from . import AllocationStatus, DeploymentStatus
from .autoscaling import AutoscalerMetrics, LocalAutoscaler
from .launch import SpawnLauncher, WorkerHandle, Zygote, ZygoteFailed, Zygotes, fork_supported
from .router import Router

log = logging.getLogger("infernetes.runtime")


@dataclass(frozen=True)
class LocalSettings:
    data_dir: Path
    python: str = sys.executable
    max_batch_tokens: int = 8192
    max_batch_size: int = 128
    max_inputs: int = 1024
    drain_timeout: float = 30.0
    ready_poll: float = 0.1
    max_backoff: float = 30.0
    # Requests held while a deployment has no ready allocation (starting, or scaled to zero): how many, how long.
    max_held_requests: int = 256
    hold_timeout_s: float = 120.0
    # Fork allocations from one process that loaded the model (shared weights, starts in a blink), or
    # start a fresh interpreter per allocation.
    fork_workers: bool = field(default_factory=fork_supported)
    worker_log_level: str = "warning"
    # Allocations x threads one deployment may run (all together: 16 times as many); None: the machine's CPUs.
    max_allocated_processors: int | None = None
    # The gateway reaches workers' /infer over a Unix socket with binary frames (worker/hop.py), not HTTP;
    # INFERNETES_BINARY_HOP=0 keeps HTTP (for comparisons).
    binary_hop: bool = field(default_factory=lambda: os.environ.get("INFERNETES_BINARY_HOP", "1") != "0")


@dataclass(eq=False)
class Allocation:
    index: int
    deployment: LocalDeployment
    sock: socket.socket
    state: str = "starting"
    handle: WorkerHandle | None = None
    task: asyncio.Task[None] | None = None
    restarts: int = 0
    started_at: float | None = None
    failure: str | None = None
    stopping: bool = False
    port: int = 0

    def __post_init__(self) -> None:
        # Read once: the socket is closed when the allocation stops, and status() must still work then
        # (getsockname() on it raised "bad file descriptor" into runtime.wait).
        self.port = self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"{self.deployment.spec.deployment_id}-{self.index}"

    def status(self) -> AllocationStatus:
        return AllocationStatus(
            allocation_id=str(self.index),
            state=self.state,
            url=self.url,
            restarts=self.restarts,
            started_at=self.started_at,
            failure=self.failure,
        )


@dataclass(eq=False)
class LocalDeployment:
    spec: Deployment
    model: ModelInfo | None  # None while the model downloads
    target: int
    allocations: list[Allocation] = field(default_factory=list)
    retiring: list[Allocation] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    failure: str | None = None
    stopping: bool = False
    started_at: float = field(default_factory=time.time)
    held: int = 0
    download: Progress | None = None
    zygote: Zygote | None = None  # the process that loaded the model and forks its workers (shared by model)
    retry: asyncio.Task[None] | None = None  # a later _reconcile, after one failed (no file descriptors left)

    def ready_urls(self) -> list[str]:
        return [a.url for a in self.allocations if a.state == "started" and not a.stopping]

    def status(self) -> DeploymentStatus:
        return DeploymentStatus(
            deployment_id=self.spec.deployment_id,
            target=self.target,
            allocations=[a.status() for a in self.allocations + self.retiring],
            failure=self.failure,
            stopping=self.stopping,
            started_at=self.started_at,
            download=self.download.as_dict() if self.download and self.download.state != "done" else None,
        )

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


class LocalRuntime:
    def __init__(self, settings: LocalSettings, catalog: ModelCatalog,
                 autoscaler: AutoscalerSettings | None = None, metrics: AutoscalerMetrics | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.deployments: dict[str, LocalDeployment] = {}
        self.downloads: dict[str, tuple[asyncio.Task[None], Progress]] = {}
        # <id>_linux-x86_64 variants being made, and those that could not be (served as their base this run).
        self.variant_tasks: dict[str, asyncio.Task[None]] = {}
        self.variant_failures: dict[str, str] = {}
        # A credential per run: workers answer only callers that hold it (the router and the probes here).
        self.credential = secrets.token_urlsafe(32)
        # url -> the allocation's Unix socket, where /infer takes the binary hop (worker/hop.py).
        self.hop_paths: dict[str, str] = {}
        self.router = Router(credential=self.credential,
                             hop_path=self.hop_paths.get if settings.binary_hop else None)
        self._probe = httpx.AsyncClient(timeout=2.0, trust_env=False,
                                        headers={"Authorization": f"Bearer {self.credential}"})
        self.logs = settings.data_dir / "logs"
        self.run_dir = settings.data_dir / "run"
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.capacity = Capacity.of_machine(settings.max_allocated_processors)
        # apply / scale / remove of one deployment run one at a time: a PUT that follows a DELETE of the same
        # id waits until the old allocations are gone, instead of reviving a deployment being torn down.
        self._locks = KeyedLocks()
        self.spawner = SpawnLauncher(settings.python, settings.data_dir)
        self.zygotes = Zygotes(settings.python, settings.data_dir, self.logs, self.run_dir)
        # Created in start(), inside the event loop that serves (asyncio queues bind to one loop).
        self.scale_requests: asyncio.Queue[str] | None = None
        self.autoscaler_metrics = metrics or AutoscalerMetrics()
        self.autoscaler = LocalAutoscaler(self, autoscaler, self.autoscaler_metrics) if autoscaler else None

    # -- the Runtime surface ------------------------------------------------------------------

    async def apply(self, deployment: Deployment, allocations: int | None = None) -> None:
        async with self._locks.hold(deployment.deployment_id):
            await self._apply(deployment, allocations)

    async def _apply(self, deployment: Deployment, allocations: int | None) -> None:
        existing = self.deployments.get(deployment.deployment_id)
        target = allocations if allocations is not None else deployment.initial_allocations(
            self.adaptive_cap(deployment))
        if deployment.adaptive_enabled:
            lo, hi = self.bounds(deployment)
            target = min(max(target, lo), hi)
        if existing is None:
            model = self.catalog.get(deployment.model_id)
            existing = LocalDeployment(spec=deployment, model=model, target=target)
            self.deployments[deployment.deployment_id] = existing
            if model is None:
                self._fetch_model(existing)
            else:
                self._use_variant(existing)
        else:
            existing.spec = deployment
            if allocations is not None or not deployment.adaptive_enabled:
                existing.target = target
            else:  # new adaptive bounds: keep the autoscaler's count, within them
                lo, hi = self.bounds(deployment)
                existing.target = min(max(existing.target, lo), hi)
        await self._reconcile(existing)

    async def scale(self, deployment_id: str, allocations: int) -> None:
        async with self._locks.hold(deployment_id):
            dep = self.deployments.get(deployment_id)
            if dep is None or dep.stopping:
                return  # removed while the autoscaler decided
            if dep.spec.adaptive_enabled:
                lo, hi = self.bounds(dep.spec)
                allocations = min(max(allocations, lo), hi)
            await self._scale(dep, allocations)

    async def _scale(self, dep: LocalDeployment, allocations: int) -> None:
        deployment_id = dep.spec.deployment_id
        if dep.target != allocations:
            log.info("deployment %s: %d -> %d allocations", deployment_id, dep.target, allocations)
            dep.target = allocations
            await self._reconcile(dep)

    async def remove(self, deployment_id: str) -> None:
        async with self._locks.hold(deployment_id):
            dep = self.deployments.get(deployment_id)
            if dep is None:
                return
            dep.stopping = True
            await dep.notify()
            try:
                await asyncio.gather(*(self._stop(a) for a in dep.allocations + dep.retiring))
                if dep.zygote is not None:  # closed if no other deployment of the same model uses it
                    await self.zygotes.release(dep.zygote, deployment_id)
            finally:
                self.deployments.pop(deployment_id, None)

    def status(self, deployment_id: str) -> DeploymentStatus | None:
        dep = self.deployments.get(deployment_id)
        return dep.status() if dep else None

    async def wait(self, deployment_id: str, timeout: float, *, fully: bool = True) -> DeploymentStatus:
        dep = self._get(deployment_id)

        def done() -> bool:
            st = dep.status()
            if st.state == "failed" or dep.stopping:
                return True
            return st.ready >= dep.target if fully else st.state == "started"

        async with dep.changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(dep.changed.wait_for(done), timeout)
        return dep.status()

    async def node_stats(self, deployment_id: str) -> list[dict[str, Any]]:
        dep = self.deployments.get(deployment_id)
        if dep is None:
            return []

        async def one(a: Allocation) -> dict[str, Any]:
            base = {"allocation_id": str(a.index), "state": a.state, "restarts": a.restarts, "failure": a.failure,
                    "start_time": int((a.started_at or dep.started_at) * 1000)}
            if a.state not in ("started", "stopping"):
                return base
            try:
                resp = await self._probe.get(a.url + "/stats", timeout=1.0)
                return {**resp.json(), **base}
            except (httpx.HTTPError, ValueError):
                return base

        return list(await asyncio.gather(*(one(a) for a in dep.allocations + dep.retiring)))

    async def infer(self, deployment_id: str, payload: bytes, timeout: float,
                    path: str = "/infer") -> tuple[int, bytes, dict[str, str]]:
        dep = self._get(deployment_id)
        urls = dep.ready_urls()
        if not urls:
            started = time.monotonic()
            urls = await self._hold(dep, min(timeout, self.settings.hold_timeout_s))
            timeout = max(1.0, timeout - (time.monotonic() - started))
        return await self.router.forward(
            urls, payload, timeout, on_failure=lambda url: self._suspect(dep, url),
            what=f"deployment [{deployment_id}]", path=path,
        )

    async def close(self) -> None:
        if self.autoscaler is not None:
            await self.autoscaler.close()
        await asyncio.gather(*(self.remove(d) for d in list(self.deployments)))
        await self.router.close()
        await self._probe.aclose()

    # -- internals ----------------------------------------------------------------------------

    @property
    def cap(self) -> int:
        """Allocations an adaptive deployment may reach when no max is set: one per core."""
        return max(1, os.cpu_count() or 1)

    def adaptive_cap(self, deployment: Deployment) -> int:
        """The safe cap for an unset max: as many allocations as the cores can run at full threads."""
        return max(1, min(self.cap, self.capacity.processors) // max(1, deployment.num_threads))

    def bounds(self, deployment: Deployment) -> tuple[int, int]:
        """An adaptive deployment's [min, max], the max capped to what the machine has left for it now
        (the min was admitted, so it stays)."""
        lo, hi = deployment.bounds(self.adaptive_cap(deployment))
        others = [d.spec for d in self.deployments.values() if d.spec.deployment_id != deployment.deployment_id]
        return lo, max(lo, min(hi, self.capacity.max_allocations(deployment, others)))

    async def start(self) -> None:
        self.scale_requests = asyncio.Queue()
        if self.autoscaler is not None:
            self.autoscaler.start()

    def _get(self, deployment_id: str) -> LocalDeployment:
        dep = self.deployments.get(deployment_id)
        if dep is None:
            raise ResourceNotFound(f"Could not find deployment [{deployment_id}]")
        return dep

    async def _hold(self, dep: LocalDeployment, timeout: float) -> list[str]:
        """No allocation is ready: wait (bounded) for one, asking for a scale-up if there are none."""
        if dep.stopping:
            raise ServiceUnavailable(f"deployment [{dep.spec.deployment_id}] is stopping")
        if dep.failure and not any(a.state in ("starting", "started") for a in dep.allocations):
            raise ServiceUnavailable(f"deployment [{dep.spec.deployment_id}] failed: {dep.failure}")
        if dep.held >= self.settings.max_held_requests:
            raise TooManyRequests(
                f"deployment [{dep.spec.deployment_id}] has no ready allocation and already holds "
                f"{dep.held} requests; retry later",
                retry_after=5,
            )
        dep.held += 1
        try:
            if dep.target == 0 and self.scale_requests is not None:
                self.scale_requests.put_nowait(dep.spec.deployment_id)
            async with dep.changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        dep.changed.wait_for(lambda: bool(dep.ready_urls()) or dep.stopping or bool(dep.failure)),
                        timeout,
                    )
        finally:
            dep.held -= 1
        urls = dep.ready_urls()
        if not urls and dep.failure:
            raise ServiceUnavailable(f"deployment [{dep.spec.deployment_id}] has no ready allocation: {dep.failure}",
                                     retry_after=5)
        if not urls:
            raise TooManyRequests(
                f"deployment [{dep.spec.deployment_id}] has no ready allocation yet "
                f"(state [{dep.status().state}]); retry later",
                retry_after=5,
            )
        return urls

    def _suspect(self, dep: LocalDeployment, url: str) -> None:
        for a in dep.allocations:
            if a.url == url and a.state == "started" and (a.handle is None or a.handle.returncode is not None):
                a.state = "starting"

    def _fetch_model(self, dep: LocalDeployment) -> None:
        """Download a built-in model in the background; deployments of it start once it is in the store."""
        model_id = canonical_id(dep.spec.model_id)
        if not self.catalog.downloadable(model_id):
            try:
                self.catalog.resolve(model_id)
            except ResourceNotFound as exc:
                dep.failure = exc.reason
            return
        if model_id not in self.downloads:
            progress = Progress(model_id)
            task = asyncio.create_task(self._download(model_id, progress), name=f"download-{model_id}")
            self.downloads[model_id] = (task, progress)
        dep.download = self.downloads[model_id][1]

    async def _download(self, model_id: str, progress: Progress) -> None:
        try:
            info = await asyncio.to_thread(self.catalog.pull, model_id, progress)
            error = None
        except Exception as exc:  # reported as the deployment's failure reason
            info, error = None, str(exc)
            log.error("download of %s failed: %s", model_id, error)
        finally:
            self.downloads.pop(model_id, None)
        for dep in list(self.deployments.values()):
            if dep.model is None and canonical_id(dep.spec.model_id) == model_id and not dep.stopping:
                dep.model, dep.failure = info, error
                if info is not None:
                    self._use_variant(dep)
                await self._reconcile(dep)

    # -- Elastic's optimized variants (<id>_linux-x86_64): our ONNX build of <id>, made on first use ------

    def _use_variant(self, dep: LocalDeployment) -> None:
        """A deployment of ``<id>_linux-x86_64`` serves the ONNX variant of ``<id>``: the one in the store, or one
        made now (its allocations wait); the base model when it cannot be made or fails its check (said in the
        log and kept for this run), and as is when the base is already Elastic's own build."""
        variant_id = dep.spec.model_id
        base = dep.model
        if not variant_id.endswith(PLATFORM_SUFFIX) or base is None:
            return
        made = self.catalog.store.get(variant_id)
        if made is not None:
            dep.model = made
            return
        if base.backend != "torch" or variant_id in self.variant_failures:
            return
        dep.model = None  # until the variant is made
        if variant_id not in self.variant_tasks:
            self.variant_tasks[variant_id] = asyncio.create_task(self._make_variant(variant_id, base),
                                                                 name=f"optimize-{variant_id}")

    async def _make_variant(self, variant_id: str, base: ModelInfo) -> None:
        try:
            from ...worker.optimize import optimize

            variant: ModelInfo | None = (await asyncio.to_thread(optimize, self.catalog.store, base.model_id,
                                                                 variant_id))[0]
            log.info("model %s: made the ONNX variant of %s", variant_id, base.model_id)
        except Exception as exc:  # not optimizable, failed its check, or ONNX Runtime missing: serve the base
            variant = None
            self.variant_failures[variant_id] = f"{type(exc).__name__}: {exc}"
            log.warning("model %s: serving %s as it is; its ONNX variant was not made: %s", variant_id,
                        base.model_id, self.variant_failures[variant_id])
        finally:
            self.variant_tasks.pop(variant_id, None)
        for dep in list(self.deployments.values()):
            if dep.model is None and dep.spec.model_id == variant_id and not dep.stopping:
                dep.model = variant or self.catalog.get(variant_id) or base
                await self._reconcile(dep)

    async def _reconcile(self, dep: LocalDeployment) -> None:
        if dep.model is None:
            await dep.notify()
            return
        while len(dep.allocations) < dep.target:
            index = self._free_index(dep)
            try:
                sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
            except OSError as exc:  # out of file descriptors: show it, and the allocations already running serve
                dep.failure = (f"could not open a socket for a new allocation: {exc.strerror or exc}; retrying in "
                               f"{self.RECONCILE_RETRY_S:g}s")
                log.error("deployment %s: %s", dep.spec.deployment_id, dep.failure)
                self._reconcile_later(dep)
                break
            alloc = Allocation(index=index, deployment=dep, sock=sock)
            hop_path = self.run_dir / f"w{alloc.port}.sock"  # the port is unique while the allocation lives
            if self.settings.binary_hop and usable_path(hop_path):  # else HTTP only (a path too long for Unix)
                self.hop_paths[alloc.url] = str(hop_path)
            dep.allocations.append(alloc)
            alloc.task = asyncio.create_task(self._supervise(alloc), name=f"allocation-{alloc.name}")
        while len(dep.allocations) > dep.target:
            # Retire allocations that are not serving first, then the newest; it finishes what it accepted.
            alloc = max(dep.allocations, key=lambda a: (a.state != "started", a.index))
            dep.allocations.remove(alloc)
            dep.retiring.append(alloc)
            asyncio.create_task(self._retire(dep, alloc))
        await dep.notify()

    RECONCILE_RETRY_S = 2.0

    def _reconcile_later(self, dep: LocalDeployment) -> None:
        """Try again to reach the target, so a deployment recovers by itself once descriptors are free."""
        async def retry() -> None:
            await asyncio.sleep(self.RECONCILE_RETRY_S)
            dep.retry = None  # a failure of this round schedules the next one
            async with self._locks.hold(dep.spec.deployment_id):
                if self.deployments.get(dep.spec.deployment_id) is dep and not dep.stopping:
                    await self._reconcile(dep)

        if dep.retry is None or dep.retry.done():
            dep.retry = asyncio.create_task(retry(), name=f"reconcile-{dep.spec.deployment_id}")

    def _free_index(self, dep: LocalDeployment) -> int:
        used = {a.index for a in dep.allocations + dep.retiring}
        return next(i for i in range(len(used) + 1) if i not in used)

    async def _retire(self, dep: LocalDeployment, alloc: Allocation) -> None:
        await self._stop(alloc)
        if alloc in dep.retiring:
            dep.retiring.remove(alloc)
        await dep.notify()

    async def _stop(self, alloc: Allocation) -> None:
        alloc.stopping = True
        handle = alloc.handle
        if handle is not None and handle.returncode is None:
            alloc.state = "stopping"
            handle.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(handle.wait(), self.settings.drain_timeout + 5)
            except asyncio.TimeoutError:
                handle.kill()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(handle.wait(), 10)
        if alloc.task is not None:
            alloc.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await alloc.task
        alloc.state = "stopped"
        self.hop_paths.pop(alloc.url, None)
        alloc.sock.close()

    def _worker_settings(self, alloc: Allocation) -> dict[str, Any]:
        """The worker's settings (infernetes.worker.config.WorkerSettings), without the socket."""
        dep, s = alloc.deployment, self.settings
        assert dep.model is not None, "allocations start only once the model is in the store"
        return {
            "model_dir": str(dep.model.path),
            "deployment_id": dep.spec.deployment_id,
            "allocation_id": str(alloc.index),
            "num_threads": dep.spec.num_threads,
            "queue_capacity": dep.spec.queue_capacity,
            "max_batch_tokens": s.max_batch_tokens,
            "max_batch_size": s.max_batch_size,
            "max_inputs": s.max_inputs,
            "drain_timeout": s.drain_timeout,
            "termination_log": str(self.run_dir / f"{alloc.name}.termination"),
            "parent_pid": os.getpid(),
            "log_level": s.worker_log_level,
            **({"ipc_path": self.hop_paths[alloc.url]} if alloc.url in self.hop_paths else {}),
        }

    async def _launch(self, alloc: Allocation) -> WorkerHandle:
        dep = alloc.deployment
        settings = self._worker_settings(alloc)
        if not self.settings.fork_workers:
            args = [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]
            # The credential goes in the environment: a command line is visible to every local user.
            return await self.spawner.launch(args, alloc.sock.fileno(), self.logs / f"{alloc.name}.log",
                                             env={AUTH_TOKEN_ENV: self.credential})
        if dep.zygote is None:
            assert dep.model is not None
            dep.zygote = self.zygotes.acquire(dep.model, dep.spec.deployment_id)
        settings.pop("parent_pid")  # a forked worker watches the zygote, its parent
        settings["auth_token"] = self.credential  # over the zygote's private socket, never a command line
        return await dep.zygote.launch(settings, alloc.sock.fileno(), self.logs / f"{alloc.name}.log")

    async def _supervise(self, alloc: Allocation) -> None:
        try:
            await self._supervise_loop(alloc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never silently: the allocation shows failed, with the reason
            alloc.state = "failed"
            alloc.failure = alloc.deployment.failure = f"the supervisor of allocation [{alloc.name}] failed: {exc!r}"
            log.exception("allocation %s: supervisor failed", alloc.name)
            await alloc.deployment.notify()

    async def _launch_failed(self, alloc: Allocation, exc: OSError, backoff: float) -> None:
        """The worker could not even be started: the data directory is read-only or full, or the process is out
        of file descriptors. Shown as failed with the reason (requests get 503, not 429s forever), and retried
        with back-off, so the deployment recovers on its own once the disk is fixed."""
        alloc.state = "failed"
        alloc.failure = (f"could not start a worker process: {exc.strerror or exc}"
                         + (f" [{exc.filename}]" if getattr(exc, "filename", None) else "")
                         + f"; check the data directory [{self.settings.data_dir}] is writable, has space and "
                         f"the server has free file descriptors; retrying in {backoff:g}s")
        alloc.deployment.failure = alloc.failure
        log.error("allocation %s: %s", alloc.name, alloc.failure)
        await alloc.deployment.notify()

    async def _supervise_loop(self, alloc: Allocation) -> None:
        dep = alloc.deployment
        backoff = 0.5
        termination = self.run_dir / f"{alloc.name}.termination"
        while not alloc.stopping:
            alloc.state = "starting"
            await dep.notify()
            try:
                termination.unlink(missing_ok=True)
                handle = alloc.handle = await self._launch(alloc)
            except ZygoteFailed as exc:
                code, reason = exc.code, exc.reason
            except OSError as exc:
                await self._launch_failed(alloc, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.max_backoff)
                continue
            else:
                ready = await self._wait_ready(alloc, handle)
                if ready:
                    alloc.state = "started"
                    alloc.started_at = time.time()
                    alloc.failure = None
                    dep.failure = None
                    await dep.notify()
                    up_since = time.monotonic()
                    code = await handle.wait()
                    if time.monotonic() - up_since > 60:
                        backoff = 0.5
                else:
                    code = await handle.wait()
                try:
                    reason = termination.read_text().strip() if termination.exists() else ""
                except OSError:
                    reason = ""
            if alloc.stopping:
                break
            if code == EXIT_MODEL_FAILED:
                alloc.state = "failed"
                alloc.failure = reason or f"worker exited with code {code}"
                dep.failure = alloc.failure
                log.error("allocation %s failed: %s", alloc.name, alloc.failure)
                await dep.notify()
                return
            alloc.restarts += 1
            alloc.state = "starting"
            alloc.failure = f"worker exited with code {code}; restarted {alloc.restarts} time(s)"
            log.warning("allocation %s died (exit code %s); restarting in %.1fs", alloc.name, code, backoff)
            await dep.notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.max_backoff)

    async def _wait_ready(self, alloc: Allocation, handle: WorkerHandle) -> bool:
        while handle.returncode is None and not alloc.stopping:
            try:
                resp = await self._probe.get(alloc.url + "/readyz", timeout=1.0)
                if resp.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(handle.wait(), self.settings.ready_poll)
        return False
