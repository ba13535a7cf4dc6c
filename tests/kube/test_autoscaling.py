"""The cluster autoscaler on the cluster box (the operator's server-side apply needs a real-ish API server),
with worker metrics scripted over HTTP."""

from __future__ import annotations

import asyncio
import time

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from clusterbox import ClusterBox
from clusterbox.fixtures import api_box

from infernetes.operator.autoscaler import AutoscalerSettings
from infernetes.operator.kube import API_VERSION, ENDPOINTS
from infernetes.operator.kube.autoscaling import ClusterAutoscaler, scale_from_zero
from infernetes.operator.kube.client import Kube, KubeConfig
from infernetes.operator.kube.operator import ClusterCache, Reconciler
from infernetes.operator.kube.planner import workload_name

NS = "search"
SETTINGS = AutoscalerSettings(interval_s=0.2, target_utilization=0.75, smoothing_s=1.0, drain_s=2.0,
                              scale_down_window_s=30.0, idle_to_zero_s=60.0)


@pytest.fixture
def cluster() -> Iterator[ClusterBox]:
    with api_box((NS,)) as box:
        yield box


@pytest.fixture
async def kube(cluster: ClusterBox) -> AsyncIterator[Kube]:
    client = Kube(KubeConfig.for_token(cluster.url, lambda: cluster.admin_token, ca_file=str(cluster.ca_path),
                                       namespace=NS))
    yield client
    await client.close()


def deployment_writes(cluster: ClusterBox) -> int:
    return len([r for r in cluster.requests() if r[1] == "deployments" and r[0] in ("create", "patch", "update")])


class ScriptedWorker:
    """A worker's /metrics whose model-busy counter grows at `busy` seconds per second."""

    def __init__(self) -> None:
        self.busy = 0.0
        self.total = 0.0
        self.last = time.time()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def advance(self) -> None:
        now = time.time()
        self.total += self.busy * (now - self.last)
        self.last = now

    async def metrics(self, request: web.Request) -> web.Response:
        self.advance()
        text = (f'infernetes_queue_size{{deployment="d",allocation="0"}} 0\n'
                f'infernetes_requests_in_flight{{deployment="d",allocation="0"}} {1 if self.busy else 0}\n'
                f'infernetes_inference_inputs_total{{deployment="d",allocation="0"}} {self.total * 100}\n'
                f'infernetes_inference_seconds_sum{{deployment="d",allocation="0"}} {self.total}\n')
        return web.Response(text=text)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


def adaptive(name: str, lo: int, hi: int) -> dict:
    return {"apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"task_type": "text_embedding", "service": "elasticsearch", "service_settings": {
                "num_threads": 1, "model_id": ".multilingual-e5-small",
                "adaptive_allocations": {"enabled": True, "min_number_of_allocations": lo,
                                         "max_number_of_allocations": hi}}}}


async def ready_pod(kube: Kube, name: str, port: int) -> None:
    """A Ready pod of endpoint `name`'s workload (this box runs no kubelet) whose metrics are at `port`."""
    dep = await kube.get("apps/v1", "deployments", NS, workload_name(name))
    await kube.create("v1", "pods", NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-0", "namespace": NS, "labels": dep["spec"]["template"]["metadata"]["labels"]},
        "spec": {"containers": [{"name": "worker", "image": "x", "ports": [{"name": "http", "containerPort": port}]}]}})
    await kube.patch("v1", "pods", NS, f"{name}-0", {"status": {
        "phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
        subresource="status")


async def replicas(kube, name):
    return (await kube.get("apps/v1", "deployments", NS, workload_name(name)))["spec"]["replicas"]


async def test_scales_on_scripted_load_and_survives_a_restart(kube, operator_settings, cluster):
    worker = ScriptedWorker()
    await worker.start()
    try:
        reconciler = Reconciler(kube, operator_settings)
        await kube.create(API_VERSION, ENDPOINTS, NS, adaptive("elastic", 1, 4))
        cr = await kube.get(API_VERSION, ENDPOINTS, NS, "elastic")
        await reconciler.reconcile(ENDPOINTS, cr)
        assert await replicas(kube, "elastic") == 1
        await ready_pod(kube, "elastic", worker.port)

        autoscaler = ClusterAutoscaler(reconciler, [NS], SETTINGS)
        worker.busy = 1.8  # 1.8 allocations' worth of work: ceil(1.8 / 0.75) = 3
        await autoscaler.tick()  # the first sample is the baseline
        await asyncio.sleep(0.5)
        assert await autoscaler.tick() == 1
        assert await replicas(kube, "elastic") == 3
        status = (await kube.get(API_VERSION, ENDPOINTS, NS, "elastic"))["status"]["autoscaler"]
        assert status["target"] == 3 and "needs 3" in status["reason"] and status["state"]["history"]
        events = [e for e in await kube.list("v1", "events", NS) if e.get("reason") == "ScaledUp"]
        assert "1 -> 3 allocations" in events[0]["message"]

        writes = deployment_writes(cluster)
        await asyncio.sleep(0.3)
        assert await autoscaler.tick() == 0  # same load, same count: the Deployment is not touched
        assert deployment_writes(cluster) == writes

        # A new operator (restart) reads the smoothing state back: no scale-down before the window passes.
        worker.busy = 0.0
        restarted = ClusterAutoscaler(Reconciler(kube, operator_settings), [NS], SETTINGS)
        await asyncio.sleep(0.3)
        await restarted.tick()
        assert await replicas(kube, "elastic") == 3
        # ... whereas a lost state would have let it drop at once.
        fresh_state = AutoscalerSettings(**{**SETTINGS.describe(), "scale_down_window_s": 0.0})
        await kube.patch(API_VERSION, ENDPOINTS, NS, "elastic", {"status": {"autoscaler": None}}, subresource="status")
        forgetful = ClusterAutoscaler(Reconciler(kube, operator_settings), [NS], fresh_state)
        await forgetful.tick()
        await asyncio.sleep(0.3)
        await forgetful.tick()
        assert await replicas(kube, "elastic") == 1
    finally:
        await worker.stop()


async def test_a_round_reads_the_operators_cache_not_the_api(kube, operator_settings, cluster):
    """Issue 12 #13: with the operator's watch cache, an autoscaling round costs no API read whatever the number
    of adaptive endpoints (it listed every resource, then got each workload and listed its pods, every tick)."""
    worker = ScriptedWorker()
    await worker.start()
    try:
        cache = ClusterCache()
        reconciler = Reconciler(kube, operator_settings, cache=cache)
        for name in ("first", "second"):
            await kube.create(API_VERSION, ENDPOINTS, NS, adaptive(name, 1, 4))
            await Reconciler(kube, operator_settings).reconcile(ENDPOINTS, await kube.get(API_VERSION, ENDPOINTS, NS,
                                                                                          name))
            await ready_pod(kube, name, worker.port)
        autoscaler = ClusterAutoscaler(reconciler, [NS], SETTINGS)
        reads: list[tuple] = []

        async def tick() -> int:
            await cache.fill(kube, [NS])  # what the operator's watches would hold by now
            before = len(cluster.requests())
            scaled = await autoscaler.tick()
            reads.extend(r for r in cluster.requests()[before:] if r[0] in ("get", "list", "watch"))
            return scaled

        worker.busy = 0.3  # one allocation is right: nothing to change
        await tick()
        await asyncio.sleep(0.3)
        assert await tick() == 0
        # It still decides from what it samples: more work scales both endpoints.
        worker.busy = 1.8
        await asyncio.sleep(0.3)
        assert await tick() == 2
        assert reads == [], reads
        assert await replicas(kube, "first") > 1 and await replicas(kube, "second") > 1
    finally:
        await worker.stop()


async def test_scale_from_zero_and_reconcile_agree(kube, operator_settings):
    reconciler = Reconciler(kube, operator_settings)
    await kube.create(API_VERSION, ENDPOINTS, NS, adaptive("sleepy", 0, 2))
    cr = await kube.get(API_VERSION, ENDPOINTS, NS, "sleepy")
    await reconciler.reconcile(ENDPOINTS, cr)
    assert await replicas(kube, "sleepy") == 0
    await scale_from_zero(kube, NS, "sleepy", {**cr, "kind": "InferenceEndpoint"}, ENDPOINTS)
    assert await replicas(kube, "sleepy") == 1
    cr = await kube.get(API_VERSION, ENDPOINTS, NS, "sleepy")
    assert cr["status"]["autoscaler"]["target"] == 1
    await reconciler.reconcile(ENDPOINTS, cr)  # a spec resync must not undo the wake-up
    assert await replicas(kube, "sleepy") == 1
