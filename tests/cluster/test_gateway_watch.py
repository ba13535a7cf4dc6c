"""Issue 12, defect 2 (the gateway half): the gateway runs alone, as the chart's gateway ServiceAccount
(its Role rendered by the chart: a 403 for anything it does not grant), and answers from watch caches:
its LISTs do not grow with the requests it serves, and what it writes it reads back at once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import helm_python
import httpx
import uvicorn
import yaml

from cluster.gateway_fixtures import NS, endpoint_cr, gapi, gbox, kube_config  # noqa: F401
from infernetes.operator.kube.main import build_cluster_app
from infernetes.operator.kube.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
RELEASE_NS = "infernetes-system"
GATEWAY_USER = f"system:serviceaccount:{RELEASE_NS}:infernetes-gateway"


def install_gateway_rbac(api: httpx.Client) -> None:
    out = helm_python.Chart.load(ROOT / "helm" / "infernetes").render(
        {"watchNamespaces": [NS]}, name="infernetes", namespace=RELEASE_NS, is_install=True)
    docs = [d for d in yaml.safe_load_all(out["infernetes/templates/gateway-rbac.yaml"]) if d]
    api.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NS}})
    for doc in docs:
        ns = doc["metadata"]["namespace"]
        plural = {"ServiceAccount": "/api/v1/namespaces/{}/serviceaccounts",
                  "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles",
                  "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/rolebindings"}[doc["kind"]]
        assert api.post(plural.format(ns), json=doc).status_code == 201


async def test_the_gateway_serves_from_watches_with_its_own_identity(gbox, gapi):
    install_gateway_rbac(gapi)
    for name in ("alpha", "beta"):
        assert gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints",
                         json=endpoint_cr(name)).status_code == 201
    token = gbox.token_for(RELEASE_NS, "infernetes-gateway")
    app = build_cluster_app(kube_config(gbox, token), NS, OperatorSettings())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        lists_at_start = _calls(gbox, "list")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(30):
                r = await client.get("/_inference")
                assert r.status_code == 200, r.text
                assert {"alpha", "beta"} <= {e["inference_id"] for e in r.json()["endpoints"]}
                assert (await client.get("/_inference/alpha")).status_code == 200
                assert (await client.get("/_ml/trained_models/_stats")).status_code == 200
            assert _calls(gbox, "list") == lists_at_start, "requests must not LIST: the watches answer them"
            assert {p for v, p in _calls(gbox, "watch")} >= {"inferenceendpoints", "modeldeployments", "pods"}

            # A kubectl change shows through the watch; the gateway's own DELETE is read back at once.
            gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints", json=endpoint_cr("gamma"))
            await _eventually(lambda: client.get("/_inference/gamma"), 200)
            r = await client.delete("/_inference/text_embedding/beta")
            assert r.status_code == 200, r.text
            assert (await client.get("/_inference/beta")).status_code == 404

            # A watch ends (a restarted API server, a timeout) and, before it resumes, history is compacted:
            # the resumed watch gets 410 Gone and the cache lists again.
            gbox.faults.inject("slow", resource="inferenceendpoints", verb="watch", delay=1.0)
            assert gbox.faults.drop_watches("inferenceendpoints") >= 1
            gapi.post(f"/api/v1/namespaces/{NS}/configmaps", json={"apiVersion": "v1", "kind": "ConfigMap",
                                                                   "metadata": {"name": "later"}})
            gbox.compact()
            gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints", json=endpoint_cr("delta"))
            await _eventually(lambda: client.get("/_inference/delta"), 200)
        forbidden = [c for c in gbox.requests() if c[2] == GATEWAY_USER and c[1] in ("secrets", "services")]
        assert not forbidden
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


def _calls(box, verb: str) -> list[tuple[str, str | None]]:
    return [(v, p) for v, p, user in box.requests() if user == GATEWAY_USER and v == verb]


async def _eventually(call, status: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (await call()).status_code != status:
        assert asyncio.get_running_loop().time() < deadline, f"never {status}"
        await asyncio.sleep(0.05)
