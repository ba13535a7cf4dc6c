"""Issue 12, defect 1: scale from zero holds. A request for an endpoint at zero allocations is held by
the gateway, which wakes the worker Deployment (0 -> 1) and writes the demand where the autoscaler
reads it; the autoscaler's next round keeps the allocation (it used to see no ready pod and no
traffic, and scaled back to 0), and the held request is answered once the pod is ready."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from helpers import fake_worker

from cluster.gateway_fixtures import NS, endpoint_cr, gapi, gbox, gkube, set_ready, start_pod  # noqa: F401
from infernetes.operator.autoscaler import AutoscalerSettings
from infernetes.operator.kube import API_VERSION, ENDPOINTS
from infernetes.operator.kube.autoscaling import ClusterAutoscaler
from infernetes.operator.kube.gateway import KubeRuntime
from infernetes.operator.kube.operator import Reconciler
from infernetes.operator.kube.planner import workload_name
from infernetes.operator.kube.settings import OperatorSettings

ANNOTATION_DEMAND = "infernetes.dev/demand"  # where the gateway writes the requests it holds
SETTINGS = AutoscalerSettings(interval_s=0.5, idle_to_zero_s=60.0, scale_down_window_s=5.0)


async def _until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


async def test_a_held_request_wakes_the_endpoint_and_the_autoscaler_keeps_it(gkube):
    kube = gkube
    settings = OperatorSettings(autoscale_interval_s=0.5)
    reconciler = Reconciler(kube, settings)
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint_cr("sleepy", lo=0, hi=2))
    # Idle for long: the autoscaler's state says the last traffic was an hour ago, and it is at zero.
    hour_ago = time.time() - 3600
    await kube.patch(API_VERSION, ENDPOINTS, NS, "sleepy", {"status": {"autoscaler": {
        "target": 0, "time": hour_ago, "state": {"since": hour_ago, "last_traffic": hour_ago, "time": time.time() - 5,
                                                 "history": [], "totals": {}}}}}, subresource="status")
    await reconciler.reconcile(ENDPOINTS, await kube.get(API_VERSION, ENDPOINTS, NS, "sleepy"))
    name = workload_name("sleepy")
    workload = await kube.get("apps/v1", "deployments", NS, name)
    assert workload["spec"]["replicas"] == 0

    async def infer(request: web.Request) -> web.Response:
        return web.json_response({"text_embedding": [{"embedding": [0.5]}]})

    url, runner = await fake_worker(infer)
    runtime = KubeRuntime(kube, NS, settings)
    await runtime.start()
    try:
        held = asyncio.create_task(runtime.infer("sleepy", b'{"input": ["x"]}', timeout=60))
        woken = await _until(lambda: _replicas_at_least(kube, name, 1))
        demand = json.loads(woken["metadata"]["annotations"][ANNOTATION_DEMAND])
        assert demand["held"] == 1 and abs(demand["time"] - time.time()) < 30

        autoscaler = ClusterAutoscaler(reconciler, [NS], SETTINGS)
        await autoscaler.tick()  # no pod yet (the ReplicaSet is slow): only the held demand keeps it
        assert (await kube.get("apps/v1", "deployments", NS, name))["spec"]["replicas"] == 1, \
            "the autoscaler did not see the requests the gateway holds"
        await start_pod(kube, woken, "sleepy-0", int(url.rsplit(":", 1)[1]))
        for _ in range(3):  # rounds while the pod starts and the request waits
            await autoscaler.tick()
            assert (await kube.get("apps/v1", "deployments", NS, name))["spec"]["replicas"] == 1, \
                "the autoscaler took back the allocation the gateway woke"
        assert not held.done()
        await set_ready(kube, "sleepy-0")
        status, body, _ = await asyncio.wait_for(held, 30)
        assert status == 200 and json.loads(body)["text_embedding"]
    finally:
        await runtime.close()
        await runner.cleanup()


async def test_no_scale_down_while_a_pod_starts(gkube):
    """Even without held requests (they timed out), a pod still starting is not idleness."""
    kube = gkube
    settings = OperatorSettings(autoscale_interval_s=0.5)
    reconciler = Reconciler(kube, settings)
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint_cr("slow", lo=0, hi=2))
    hour_ago = time.time() - 3600
    await kube.patch(API_VERSION, ENDPOINTS, NS, "slow", {"status": {"autoscaler": {
        "target": 1, "time": hour_ago, "state": {"since": hour_ago, "last_traffic": hour_ago, "time": time.time() - 5,
                                                 "history": [], "totals": {}}}}}, subresource="status")
    await reconciler.reconcile(ENDPOINTS, await kube.get(API_VERSION, ENDPOINTS, NS, "slow"))
    name = workload_name("slow")
    workload = await kube.get("apps/v1", "deployments", NS, name)
    assert workload["spec"]["replicas"] == 1
    await start_pod(kube, workload, "slow-0", 9)
    await ClusterAutoscaler(reconciler, [NS], SETTINGS).tick()
    assert (await kube.get("apps/v1", "deployments", NS, name))["spec"]["replicas"] == 1
    await kube.delete("v1", "pods", NS, "slow-0")  # no pod starting any more, idle for an hour: to zero
    await _until(lambda: _gone(kube, "slow-0"))
    await ClusterAutoscaler(reconciler, [NS], SETTINGS).tick()
    assert (await kube.get("apps/v1", "deployments", NS, name))["spec"]["replicas"] == 0


async def _replicas_at_least(kube, name, n):
    workload = await kube.get("apps/v1", "deployments", NS, name)
    return workload if workload["spec"]["replicas"] >= n else None


async def _gone(kube, pod):
    return await kube.get("v1", "pods", NS, pod) is None
