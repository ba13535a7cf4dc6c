"""The gateway's side of the worker credential and deadline (issue 13, D4 and D12): the router sends the run's
credential and the request's timeout on every call; in a cluster, worker pods take the credential from a
Secret and the gateway reads the same token from its environment."""

from __future__ import annotations

import kubernetes_validate
import pytest
from aiohttp import web
from helpers import fake_worker

from infernetes.operator.kube.planner import Owner, plan
from infernetes.operator.kube.settings import OperatorSettings
from infernetes.operator.records import Deployment
from infernetes.operator.runtime.router import Router
from infernetes.worker.config import AUTH_TOKEN_ENV


@pytest.fixture
async def recorder():
    """A stand-in worker that records the headers of every call."""
    seen: list[dict[str, str]] = []

    async def infer(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=b"{}")

    url, runner = await fake_worker(infer)
    try:
        yield url, seen
    finally:
        await runner.cleanup()


async def test_the_router_sends_the_credential_and_the_timeout(recorder):
    url, seen = recorder
    router = Router(credential="run-secret")
    try:
        assert (await router.forward([url], b"{}", 7.5))[0] == 200
    finally:
        await router.close()
    assert seen[0]["Authorization"] == "Bearer run-secret"
    assert seen[0]["X-Infernetes-Timeout"] == "7.500"
    anonymous = Router()
    try:
        await anonymous.forward([url], b"{}", 3)
    finally:
        await anonymous.close()
    assert "Authorization" not in seen[1]


def _worker_env(settings: OperatorSettings) -> dict:
    dep = Deployment(deployment_id="e5", model_id=".multilingual-e5-small", task_type="text_embedding",
                     num_threads=1, num_allocations=1)
    workload = plan(dep, namespace="search", replicas=1,
                    owner=Owner("infernetes.dev/v1alpha1", "InferenceEndpoint", "e5", "uid"), settings=settings)
    kubernetes_validate.validate(workload.deployment, "1.37", strict=True)
    (worker,) = workload.deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in worker["env"]}


def test_worker_pods_take_the_credential_from_a_secret():
    env = _worker_env(OperatorSettings(worker_credential_secret="infernetes-worker-credential"))
    assert env[AUTH_TOKEN_ENV] == {"secretKeyRef": {"name": "infernetes-worker-credential", "key": "token"}}
    assert AUTH_TOKEN_ENV not in _worker_env(OperatorSettings())


def test_the_cluster_gateway_sends_the_token_from_its_environment(monkeypatch):
    from infernetes.operator.kube.gateway import KubeRuntime

    monkeypatch.setenv(AUTH_TOKEN_ENV, "cluster-secret")
    runtime = KubeRuntime(None, "search", OperatorSettings())  # type: ignore[arg-type]
    assert runtime.router.headers["Authorization"] == "Bearer cluster-secret"
    assert runtime._probe.headers["Authorization"] == "Bearer cluster-secret"
    monkeypatch.delenv(AUTH_TOKEN_ENV)
    assert "Authorization" not in KubeRuntime(None, "search", OperatorSettings()).router.headers  # type: ignore[arg-type]


def _render(values: dict) -> list[dict]:
    from pathlib import Path

    import helm_python
    import yaml

    chart = helm_python.Chart.load(Path(__file__).resolve().parents[2] / "helm" / "infernetes")
    out = chart.render(values, name="infernetes", namespace="infernetes-system", is_install=True)
    return [d for name, text in out.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def test_the_chart_shares_one_credential_between_the_gateway_and_the_workers():
    import yaml

    docs = _render({"watchNamespaces": ["search", "ingest"], "gateway": {"namespace": "search"},
                    "workers": {"credential": {"enabled": True}}})
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "infernetes-worker-credential"]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["infernetes-system", "ingest", "search"]
    tokens = {s["stringData"]["token"] for s in secrets}
    assert len(tokens) == 1 and len(tokens.pop()) == 48
    for s in secrets:
        kubernetes_validate.validate(s, "1.37", strict=True)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    settings = OperatorSettings(**yaml.safe_load(config["data"]["operator.yaml"]))
    assert settings.worker_credential_secret == "infernetes-worker-credential"
    (gateway,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "infernetes-gateway"]
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": AUTH_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "infernetes-worker-credential",
                                                                   "key": "token"}}} in env
    # Off (on by default), and never cluster-wide: no Secret, no setting.
    for values in ({"workers": {"credential": {"enabled": False}}},
                   {"clusterWide": True, "workers": {"credential": {"enabled": True}}}):
        docs = _render(values)
        assert not [d for d in docs if d["metadata"]["name"] == "infernetes-worker-credential"]
        (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
        assert yaml.safe_load(config["data"]["operator.yaml"])["worker_credential_secret"] is None
