"""Issue 12, item 14 (placement): an endpoint's Kubernetes-only `placement` block (resources, GPUs, node
selector, tolerations, affinity, priority class) reaches its worker pods, is validated by the CRD on the
box, and never shows in the Elasticsearch body; every worker Deployment gets a PodDisruptionBudget and a
spread over nodes and zones; `priority: low` runs as Elasticsearch runs it (one allocation of one thread,
evicted first)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from cluster.gateway_fixtures import NS, endpoint_cr, gapi, gbox, gkube  # noqa: F401
from infernetes.operator.kube import API_VERSION, DEPLOYMENTS, ENDPOINTS
from infernetes.operator.kube.gateway import ClusterModels, KubeStore
from infernetes.operator.kube.operator import Reconciler
from infernetes.operator.kube.planner import workload_name
from infernetes.operator.kube.settings import OperatorSettings

PLACEMENT = {
    "gpus": 1,
    "resources": {"requests": {"memory": "6Gi"}, "limits": {"memory": "8Gi", "ephemeral-storage": "20Gi"}},
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu.model", "operator": "In", "values": ["l4", "a10"]}]}]}}},
    "priorityClassName": "inference-high",
}


def _pod_spec(kube_dep):
    return kube_dep["spec"]["template"]["spec"]


async def test_placement_reaches_the_worker_pods_and_stays_out_of_the_es_body(gkube):
    kube = gkube
    settings = OperatorSettings(node_selector={"arch": "amd64"}, priority_class_name="inference")
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint_cr("gpu-e5", placement=PLACEMENT))
    cr = await kube.get(API_VERSION, ENDPOINTS, NS, "gpu-e5")
    assert cr["spec"]["placement"] == PLACEMENT, "the CRD keeps the block (no pruning)"
    found, changes = await Reconciler(kube, settings).reconcile(ENDPOINTS, cr)
    assert found.problem is None, found.problem
    dep = await kube.get("apps/v1", "deployments", NS, workload_name("gpu-e5"))
    spec = _pod_spec(dep)
    (worker,) = spec["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1" == worker["resources"]["requests"]["nvidia.com/gpu"]
    assert worker["resources"]["requests"]["memory"] == "6Gi" and worker["resources"]["limits"]["memory"] == "8Gi"
    assert worker["resources"]["limits"]["cpu"] == "1", "CPU still follows num_threads"
    assert spec["nodeSelector"] == {"arch": "amd64", "pool": "gpu"}
    assert PLACEMENT["tolerations"][0] in spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["affinity"] == PLACEMENT["affinity"] and spec["priorityClassName"] == "inference-high"
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    budget = await kube.get("policy/v1", "poddisruptionbudgets", NS, workload_name("gpu-e5"))
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == dep["spec"]["selector"]
    assert budget["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    for obj in (dep, budget):
        kubernetes_validate.validate({k: v for k, v in obj.items() if k != "status"}, "1.37", strict=True)
    # The Elasticsearch view of the endpoint is the PUT body, without the Kubernetes block.
    endpoint = await KubeStore(kube, NS, ClusterModels(settings)).get_endpoint("gpu-e5")
    assert "placement" not in endpoint.body and endpoint.body["service_settings"]["model_id"]


@pytest.mark.parametrize("bad,why", [
    ({"resources": {"requests": {"cpu": "4"}}}, "num_threads"),
    ({"resources": {"limits": {"nvidia.com/gpu": "2"}}}, "placement.gpus"),
    ({"gpus": -1}, "gpus"),
    ({"tolerations": [{"key": "k", "effect": "NoWay"}]}, "effect"),
    ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ({"tolerations": [{"operator": "Sometimes"}]}, "operator"),
    ({"priorityClassName": "Not_A_Name"}, "priorityClassName"),
])
def test_the_crd_refuses_bad_placement(gapi, bad, why):
    r = gapi.post(f"/apis/infernetes.dev/v1alpha1/namespaces/{NS}/inferenceendpoints",
                  json=endpoint_cr("bad", placement=bad))
    assert r.status_code == 422, r.text
    assert why in r.text


async def test_low_priority_is_one_evictable_allocation_of_one_thread(gkube):
    kube = gkube
    settings = OperatorSettings(low_priority_class_name="infernetes-low")
    body = {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": "background", "namespace": NS},
            "spec": {"model_id": ".multilingual-e5-small", "deployment_id": "background", "priority": "low",
                     "threads_per_allocation": 1}}
    await kube.create(API_VERSION, DEPLOYMENTS, NS, body)
    found, _ = await Reconciler(kube, settings).reconcile(DEPLOYMENTS, await kube.get(API_VERSION, DEPLOYMENTS, NS,
                                                                                     "background"))
    assert found.problem is None, found.problem
    dep = await kube.get("apps/v1", "deployments", NS, workload_name("background"))
    (worker,) = _pod_spec(dep)["containers"]
    assert dep["spec"]["replicas"] == 1
    assert worker["resources"]["requests"]["cpu"] == "100m" and worker["resources"]["limits"]["cpu"] == "1"
    assert _pod_spec(dep)["priorityClassName"] == "infernetes-low"
    normal = await kube.create(API_VERSION, DEPLOYMENTS, NS, {**body, "metadata": {"name": "fg", "namespace": NS},
                                                             "spec": {**body["spec"], "deployment_id": "fg",
                                                                      "priority": "normal"}})
    await Reconciler(kube, settings).reconcile(DEPLOYMENTS, normal)
    (fg,) = _pod_spec(await kube.get("apps/v1", "deployments", NS, workload_name("fg")))["containers"]
    assert fg["resources"]["requests"]["cpu"] == "1"
    assert "priorityClassName" not in _pod_spec(await kube.get("apps/v1", "deployments", NS, workload_name("fg")))
