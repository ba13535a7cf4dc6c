"""The REST gateway in cluster mode: custom resources are the store, worker pods serve inference.
On the cluster box, with the product's operator as the chart's ServiceAccount (the operator's
server-side apply needs a real-ish API server, which kmock is not)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from clusterbox import ClusterBox
from helpers import free_port
from kubeharness import eventually

from cluster.conftest import NS, chart_rbac, cluster_box, start_operator  # noqa: F401 - fixtures

from infernetes.operator.kube import API_VERSION, DEPLOYMENTS, ENDPOINTS
from infernetes.operator.kube.client import Kube, KubeConfig
from infernetes.operator.kube.main import build_cluster_app
from infernetes.operator.kube.planner import workload_name
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow


@pytest.fixture
def kube_config(cluster_box: ClusterBox) -> KubeConfig:
    return KubeConfig.for_token(cluster_box.url, lambda: cluster_box.admin_token, ca_file=str(cluster_box.ca_path),
                                namespace=NS)


@pytest.fixture
async def kube(kube_config: KubeConfig):  # type: ignore[no-untyped-def]
    client = Kube(kube_config)
    yield client
    await client.close()


@pytest.fixture
def operator(start_operator):  # type: ignore[no-untyped-def]
    return start_operator(status_interval_s=0.3)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir):
    """A real worker process, standing in for a pod's worker container."""
    store = ModelStore(tmp_path_factory.mktemp("pod") / "models")
    info = store.import_folder(tiny_model_dir, ".multilingual-e5-small")
    port = free_port()
    exe = Path(sys.executable).with_name("infernetes")
    proc = subprocess.Popen([str(exe), "worker", "--model-dir", str(info.path), "--port", str(port),
                             "--deployment-id", "pod"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the worker exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the worker never became ready"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
async def gateway(kube_config, operator_settings, operator):
    app = build_cluster_app(kube_config, NS, operator_settings, poll_interval=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start_pod(kube, deployment_id, port, index=0):
    """Play kubelet: a ready pod of the planned workload, its worker listening on localhost."""
    dep = await eventually(lambda: kube.get("apps/v1", "deployments", NS, workload_name(deployment_id)))
    labels = dep["spec"]["template"]["metadata"]["labels"]
    await kube.create("v1", "pods", NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{dep['metadata']['name']}-{index}", "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "worker", "image": "x",
                                 "ports": [{"name": "http", "containerPort": port}]}]},
    })
    await kube.patch("v1", "pods", NS, f"{dep['metadata']['name']}-{index}", {"status": {
        "phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}},
        subresource="status")
    await kube.patch("apps/v1", "deployments", NS, dep["metadata"]["name"], {"status": {
        "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}}, subresource="status")


E5 = {"service": "elasticsearch",
      "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".multilingual-e5-small"}}


async def test_put_creates_a_resource_and_inference_reaches_the_pods(gateway, kube, worker):
    resp = await gateway.put("/_inference/text_embedding/my_e5_model?timeout=1s", json=E5)
    assert resp.status_code == 408  # no pod yet: the endpoint exists and keeps starting
    crs = await kube.list(API_VERSION, ENDPOINTS, NS)
    (cr,) = [c for c in crs if c["spec"].get("inference_id") == "my_e5_model"]
    assert cr["metadata"]["name"].startswith("my-e5-model-")  # underscores are not valid in names
    assert cr["spec"]["service_settings"] == E5["service_settings"] and cr["spec"]["task_type"] == "text_embedding"
    listed = (await gateway.get("/_inference/my_e5_model")).json()["endpoints"]
    assert listed[0]["inference_id"] == "my_e5_model"

    await start_pod(kube, "my_e5_model", worker)

    async def served():
        r = await gateway.post("/_inference/text_embedding/my_e5_model", json={"input": ["hello", "world"]})
        return r.status_code == 200 and r.json()

    out = await eventually(served, timeout=45)
    assert len(out["text_embedding"]) == 2 and len(out["text_embedding"][0]["embedding"]) == 32

    async def stats():
        r = await gateway.get("/_ml/trained_models/my_e5_model/_stats")
        d = r.json()["trained_model_stats"][0]["deployment_stats"]
        return d if d["allocation_status"]["state"] == "fully_allocated" else None

    d = await eventually(stats, timeout=45)
    assert d["state"] == "started" and d["nodes"][0]["inference_count"] >= 1

    deleted = await gateway.delete("/_inference/my_e5_model")
    assert deleted.json() == {"acknowledged": True, "pipelines": []}

    async def gone():
        return not [c for c in await kube.list(API_VERSION, ENDPOINTS, NS)
                    if c["spec"].get("inference_id") == "my_e5_model"]

    await eventually(gone, timeout=45)


async def test_kubectl_apply_is_visible_through_the_api(gateway, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, {
        "apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": "from-gitops", "namespace": NS},
        "spec": {"task_type": "rerank", "service": "elasticsearch",
                 "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".rerank-v1"}}})

    async def visible():
        r = await gateway.get("/_inference/rerank/from-gitops")
        return r.status_code == 200 and r.json()["endpoints"][0]

    ep = await eventually(visible)
    assert ep["task_settings"] == {"return_documents": True}
    assert ep["service_settings"]["model_id"] == ".rerank-v1"
    assert (await gateway.get("/_inference/text_embedding/from-gitops")).status_code == 404


async def test_validation_and_conflicts_in_cluster_mode(gateway, kube):
    bad = await gateway.put("/_inference/text_embedding/bad", json={
        "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 3, "model_id": "x"}})
    assert bad.status_code == 400 and "[num_threads] must be a power of 2" in bad.json()["error"]["reason"]
    unknown = await gateway.put("/_inference/text_embedding/unknown", json={
        "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                         "model_id": "not-declared"}})
    assert unknown.status_code == 404 and "Could not find trained model" in unknown.json()["error"]["reason"]
    assert await kube.list(API_VERSION, ENDPOINTS, NS) == []  # rejected requests create nothing
    await gateway.put("/_inference/text_embedding/twice?timeout=0s", json=E5)
    again = await gateway.put("/_inference/text_embedding/twice?timeout=0s", json=E5)
    assert again.status_code == 400 and again.json()["error"]["type"] == "resource_already_exists_exception"


async def test_start_creates_a_model_deployment(gateway, kube, worker):
    resp = await gateway.post("/_ml/trained_models/.elser_model_2/deployment/_start",
                              params={"number_of_allocations": 2, "wait_for": "starting"})
    assert resp.status_code == 200, resp.text
    (md,) = await kube.list(API_VERSION, DEPLOYMENTS, NS)
    assert md["spec"]["model_id"] == ".elser_model_2" and md["spec"]["number_of_allocations"] == 2
    reuse = await gateway.put("/_inference/sparse_embedding/use_existing_deployment?timeout=0s", json={
        "service": "elasticsearch", "service_settings": {"deployment_id": ".elser_model_2"}})
    assert reuse.status_code == 200, reuse.text
    assert reuse.json()["service_settings"] == {"num_allocations": 2, "num_threads": 1, "model_id": ".elser_model_2",
                                                "deployment_id": ".elser_model_2"}
    refused = await gateway.post("/_ml/trained_models/.elser_model_2/deployment/_stop")
    assert refused.status_code == 409
