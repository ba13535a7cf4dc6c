"""Issue 12, defects 2, 10 and 11, as the chart renders them: the gateway is its own Deployment (2+
replicas, rolling updates that never go below the replica count, a PDB, its own least-privilege
identity, an HPA when asked), the operator is leader-elected (so 2 replicas are allowed); workers are
reachable only from the gateway (a NetworkPolicy and a credential, both on by default) and the Argo CD
example renders the same objects on every sync (no random Secret)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from infernetes.operator.kube.planner import Owner, plan
from infernetes.operator.kube.settings import OperatorSettings
from infernetes.operator.records import Deployment
from infernetes.worker.app import GatewayOnly
from infernetes.worker.config import AUTH_TOKEN_ENV

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "infernetes"
NAMESPACE = "infernetes-system"


def render(values: dict[str, Any], chart: Any = None) -> list[dict[str, Any]]:
    chart = chart or helm_python.Chart.load(CHART)
    out = chart.render(values, name="infernetes", namespace=NAMESPACE, is_install=True)
    return [d for name, text in out.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_gateway_is_its_own_deployment_with_replicas_pdb_and_identity():
    docs = render({})
    gateway = one(docs, "Deployment", "infernetes-gateway")
    assert gateway["spec"]["replicas"] >= 2
    assert gateway["spec"]["strategy"] == {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = gateway["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["infernetes", "gateway"] and c["readinessProbe"]
    # A starting gateway is seen serving within a second (rollouts wait on it), then probed at the usual pace.
    assert c["startupProbe"]["periodSeconds"] == 1 and c["startupProbe"]["httpGet"] == c["readinessProbe"]["httpGet"]
    assert pod["serviceAccountName"] == "infernetes-gateway"
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    selector = gateway["spec"]["selector"]["matchLabels"]
    assert one(docs, "Service", "infernetes")["spec"]["selector"] == selector
    pdb = one(docs, "PodDisruptionBudget", "infernetes-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["maxUnavailable"] == 1
    role = one(docs, "Role", "infernetes-gateway")
    verbs = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("inferenceendpoints", "watch") in verbs and ("pods", "watch") in verbs
    assert ("deployments", "patch") in verbs and ("deployments", "create") not in verbs  # wakes, never creates
    assert not any(r in ("secrets", "services", "leases") for r, _ in verbs)
    binding = one(docs, "RoleBinding", "infernetes-gateway")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "infernetes-gateway", "namespace": NAMESPACE}]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


def test_the_hpa_example_replaces_the_fixed_replica_count():
    docs = render({"gateway": {"autoscaling": {"enabled": True, "maxReplicas": 6}}})
    hpa = one(docs, "HorizontalPodAutoscaler", "infernetes-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "infernetes-gateway" and hpa["spec"]["maxReplicas"] == 6
    assert "replicas" not in one(docs, "Deployment", "infernetes-gateway")["spec"]  # the HPA owns it
    single = render({"gateway": {"replicas": 1}})
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"], "a PDB on 1 replica would block drains"


def test_the_operator_is_leader_elected_and_two_replicas_are_allowed():
    docs = render({"operator": {"replicas": 2}})
    operator = one(docs, "Deployment", "infernetes")
    assert operator["spec"]["replicas"] == 2 and operator["spec"]["strategy"]["type"] == "RollingUpdate"
    (c,) = operator["spec"]["template"]["spec"]["containers"]
    assert "--no-gateway" in c["args"] and "--leader-election-lease=infernetes-operator" in c["args"]
    role = one(docs, "Role", "infernetes-leader-election")
    assert {n for rule in role["rules"] for n in rule.get("resourceNames", [])} == {"infernetes-operator"}
    with pytest.raises(helm_python.HelmError, match="leaderElection"):
        render({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}})
    assert one(render({"operator": {"leaderElection": {"enabled": False}}}), "Deployment", "infernetes")[
        "spec"]["strategy"]["type"] == "Recreate"


def test_workers_accept_only_the_gateway_by_default():
    docs = render({})
    policy = one(docs, "NetworkPolicy", "infernetes-workers")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [s["podSelector"]["matchLabels"] for s in policy["spec"]["ingress"][0]["from"]]
    assert {"app.kubernetes.io/component": "gateway"}.items() <= sources[0].items()
    # The credential: worker pods demand the token of the Secret the chart renders, and the gateway sends it.
    settings = OperatorSettings.model_validate(yaml.safe_load(one(docs, "ConfigMap", "infernetes")["data"][
        "operator.yaml"]))
    secret = one(docs, "Secret", "infernetes-worker-credential")
    token = secret["stringData"]["token"]
    assert len(token) >= 32
    dep = Deployment(deployment_id="e5", model_id=".multilingual-e5-small", task_type="text_embedding",
                     num_threads=1, num_allocations=1)
    workload = plan(dep, namespace=NAMESPACE, replicas=1, settings=settings,
                    owner=Owner("infernetes.dev/v1alpha1", "InferenceEndpoint", "e5", "uid"))
    (worker,) = workload.deployment["spec"]["template"]["spec"]["containers"]
    ref = {e["name"]: e for e in worker["env"]}[AUTH_TOKEN_ENV]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "infernetes-worker-credential", "key": "token"}
    (gw,) = one(docs, "Deployment", "infernetes-gateway")["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e for e in gw["env"]}["INFERNETES_WORKER_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == ref


async def test_a_worker_with_the_charts_credential_refuses_other_callers():
    token = one(render({}), "Secret", "infernetes-worker-credential")["stringData"]["token"]

    async def infer(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"ok": True})

    app = GatewayOnly(Starlette(routes=[Route("/infer", infer, methods=["POST"])]), token, 1 << 20)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as client:
        assert (await client.post("/infer", json={})).status_code == 401
        assert (await client.post("/infer", json={}, headers={"Authorization": "Bearer guess"})).status_code == 403
        assert (await client.post("/infer", json={}, headers={"Authorization": f"Bearer {token}"})).status_code == 200


def _argo_values() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "gitops" / "argocd-application.yaml").read_text()))
    (app,) = [d for d in docs if d["spec"]["source"].get("path") == "helm/infernetes"]
    return app["spec"]["source"]["helm"]["valuesObject"]


def test_argo_cd_syncs_render_the_same_objects():
    """Argo CD runs `helm template` on every sync (lookup finds nothing): no random Secret may be rendered."""
    chart = helm_python.Chart.load(CHART)
    values = _argo_values()
    first = chart.render(values, name="infernetes", namespace=NAMESPACE, is_install=True)
    second = chart.render(values, name="infernetes", namespace=NAMESPACE, is_install=True)
    assert first == second
    docs = render(values, chart)
    assert not [d for d in docs if d["kind"] == "Secret"], "the example names existing Secrets"
    (gw,) = one(docs, "Deployment", "infernetes-gateway")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in gw["env"]}
    assert env["INFERNETES_WORKER_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "infernetes-worker-credential"
    volumes = one(docs, "Deployment", "infernetes-gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "api-keys", "secret": {"secretName": "infernetes-api-keys"}} in volumes
