"""Issue 12, defect 1, with everything running: the product's operator (reconciler, status loop and
autoscaler every 0.3 s, as the chart's operator ServiceAccount) and the gateway (as the chart's gateway
ServiceAccount). A request to an endpoint at zero wakes it, rounds of the autoscaler and the operator's
reconciles pass while the pod starts, the allocation stays, and the held request is answered."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import pytest
import uvicorn
from aiohttp import web
from helpers import free_port

from infernetes.operator.kube.autoscaling import ClusterAutoscaler
from infernetes.operator.kube.main import build_cluster_app
from infernetes.operator.kube.planner import workload_name

from .conftest import DEPLOYMENTS, GATEWAY_SA, IE, endpoint, make_pod, operator_settings, sa_config, set_pod_status

pytestmark = pytest.mark.slow  # runs the operator


async def _until(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := predicate()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def test_scale_from_zero_holds_with_the_operator_running(cluster_box, admin, start_operator, monkeypatch):
    ticks = []
    tick = ClusterAutoscaler.tick

    async def counted(self):  # type: ignore[no-untyped-def]
        try:
            return await tick(self)
        finally:
            ticks.append(threading.get_ident())

    monkeypatch.setattr(ClusterAutoscaler, "tick", counted)
    port = free_port()
    # Idle endpoints go to zero after one second: without the gateway's demand, the wake-up would be undone.
    start_operator(autoscale_interval_s=0.3, scale_to_zero_after_s=1, scale_down_window_s=1, worker_port=port)
    assert admin.post(IE, json=endpoint("sleepy", adaptive=(0, 2))).status_code == 201
    path = f"{DEPLOYMENTS}/{workload_name('sleepy')}"
    await _until(lambda: (r := admin.get(path)).status_code == 200 and r.json()["spec"]["replicas"] == 0,
                 what="the workload at zero")
    seen = len(ticks)
    await _until(lambda: len(ticks) >= seen + 5, what="idle rounds")  # idle for longer than scale_to_zero_after_s

    async def infer(request: web.Request) -> web.Response:
        return web.json_response({"text_embedding": [{"embedding": [0.5]}]})

    worker = web.Application()
    worker.router.add_post("/infer", infer)
    runner = web.AppRunner(worker)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    app = build_cluster_app(sa_config(cluster_box, GATEWAY_SA), "search", operator_settings(worker_port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        await _until(lambda: server.started, what="the gateway")
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            held = asyncio.create_task(client.post("/_inference/text_embedding/sleepy", json={"input": ["x"]}))
            await _until(lambda: admin.get(path).json()["spec"]["replicas"] == 1, what="the wake-up")
            seen = len(ticks)
            await _until(lambda: len(ticks) >= seen + 3, what="three autoscaler rounds")
            assert admin.get(path).json()["spec"]["replicas"] == 1, "the allocation was taken back"
            assert not held.done()
            make_pod(admin, admin.get(path).json(), "sleepy-0")  # the ReplicaSet, at last
            set_pod_status(admin, "sleepy-0", {"phase": "Pending", "podIP": "127.0.0.1"})
            seen = len(ticks)
            await _until(lambda: len(ticks) >= seen + 3, what="three more rounds")
            assert admin.get(path).json()["spec"]["replicas"] == 1
            set_pod_status(admin, "sleepy-0", {"phase": "Running", "podIP": "127.0.0.1",
                                               "conditions": [{"type": "Ready", "status": "True"}]})
            r = await asyncio.wait_for(held, 60)
            assert r.status_code == 200, r.text
            assert r.json()["text_embedding"][0]["embedding"] == [0.5]
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, 30)
        await runner.cleanup()
