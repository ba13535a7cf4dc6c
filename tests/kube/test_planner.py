"""The pure workload planner: table tests, and every rendered object validated against Kubernetes' schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest

from infernetes.operator.kube.planner import Owner, desired_replicas, memory_mib, plan, workload_name
from infernetes.operator.kube.settings import ExtraModel, OperatorSettings
from infernetes.operator.records import Deployment

OWNER = Owner("infernetes.dev/v1alpha1", "InferenceEndpoint", "my-e5-model", "1234-uid")


def dep(**kw) -> Deployment:
    base = dict(deployment_id="my-e5-model", model_id=".multilingual-e5-small", task_type="text_embedding",
                num_threads=4, num_allocations=2)
    return Deployment(**{**base, **kw})


def env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


SETTINGS = [
    OperatorSettings(),
    OperatorSettings(model_cache_pvc="models", node_selector={"pool": "ml"},
                     tolerations=[{"key": "ml", "operator": "Exists", "effect": "NoSchedule"}],
                     affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
                     priority_class_name="inference", worker_service_account="workers", image_pull_secrets=["reg"],
                     hub_token_secret="hf", model_hub="https://mirror.example", pod_labels={"team": "search"}),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "everything"])
def test_rendered_objects_are_valid_kubernetes(settings):
    workload = plan(dep(), namespace="search", replicas=2, owner=OWNER, settings=settings)
    for obj in (workload.deployment, workload.service):
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_threads_become_cpu_and_torch_threads():
    workload = plan(dep(num_threads=4), namespace="search", replicas=2, owner=OWNER, settings=OperatorSettings())
    pod = workload.deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["requests"]["cpu"] == worker["resources"]["limits"]["cpu"] == "4"
    e = env(worker)
    assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == e["INFERNETES_WORKER_NUM_THREADS"] == "4"
    assert e["INFERNETES_WORKER_MODEL_DIR"] == "/var/lib/infernetes/models/.multilingual-e5-small"
    assert workload.deployment["spec"]["replicas"] == 2


def test_pods_are_locked_down_and_probed():
    workload = plan(dep(), namespace="search", replicas=1, owner=OWNER, settings=OperatorSettings())
    pod = workload.deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    (worker,) = pod["containers"]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600
    # A loaded model is seen at once (scale from zero holds requests meanwhile), not up to a long period later.
    assert worker["startupProbe"]["periodSeconds"] == 1
    (pull,) = pod["initContainers"]
    assert pull["command"][:4] == ["infernetes", "models", "ensure", ".multilingual-e5-small"]
    assert {v["name"] for v in pod["volumes"]} == {"model-cache", "tmp"}
    assert next(v for v in pod["volumes"] if v["name"] == "model-cache")["emptyDir"]["sizeLimit"] == "10Gi"


def test_model_cache_pvc_and_extra_models():
    settings = OperatorSettings(model_cache_pvc="shared-models", models={
        "msmarco-MiniLM-L12-cos-v5": ExtraModel(repo="sentence-transformers/msmarco-MiniLM-L12-cos-v5",
                                                task_type="text_embedding", size_bytes=130_000_000)})
    workload = plan(dep(model_id="msmarco-MiniLM-L12-cos-v5"), namespace="search", replicas=1, owner=OWNER,
                    settings=settings)
    pod = workload.deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared-models"
    assert "--repo" in pod["initContainers"][0]["command"]
    assert memory_mib("msmarco-MiniLM-L12-cos-v5", settings) < memory_mib(".multilingual-e5-small", settings)


def test_owner_labels_and_selector():
    workload = plan(dep(deployment_id=".elser_model_2", model_id=".elser_model_2", task_type="sparse_embedding"),
                    namespace="search", replicas=1, owner=OWNER, settings=OperatorSettings())
    d = workload.deployment
    assert d["metadata"]["name"] == workload_name(".elser_model_2")
    assert d["metadata"]["name"].startswith("infernetes-elser-model-2-")
    assert d["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert d["metadata"]["annotations"]["infernetes.dev/deployment-id"] == ".elser_model_2"
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert workload.service["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]


def test_template_hash_changes_only_with_the_template():
    a = plan(dep(), namespace="s", replicas=1, owner=OWNER, settings=OperatorSettings())
    b = plan(dep(), namespace="s", replicas=5, owner=OWNER, settings=OperatorSettings())
    c = plan(dep(num_threads=8), namespace="s", replicas=1, owner=OWNER, settings=OperatorSettings())
    h = "infernetes.dev/template-hash"
    assert a.deployment["metadata"]["annotations"][h] == b.deployment["metadata"]["annotations"][h]
    assert a.deployment["metadata"]["annotations"][h] != c.deployment["metadata"]["annotations"][h]


@pytest.mark.parametrize(("kw", "current", "expected"), [
    ({"num_allocations": 3}, None, 3),
    ({"num_allocations": 3}, 7, 3),
    ({"num_allocations": None, "adaptive": {"enabled": True, "min_number_of_allocations": 1,
                                             "max_number_of_allocations": 4}}, None, 1),
    ({"num_allocations": None, "adaptive": {"enabled": True, "min_number_of_allocations": 1,
                                             "max_number_of_allocations": 4}}, 3, 3),
    ({"num_allocations": None, "adaptive": {"enabled": True, "min_number_of_allocations": 1,
                                             "max_number_of_allocations": 4}}, 9, 4),
    ({"num_allocations": None, "adaptive": {"enabled": True}}, None, 0),
    ({"num_allocations": None, "adaptive": {"enabled": True}}, 100, 8),  # the safe cap
])
def test_desired_replicas(kw, current, expected):
    assert desired_replicas(dep(**kw), current, OperatorSettings()) == expected
