"""The operator end to end against the Kubernetes API emulator (kopf + kmock)."""

from __future__ import annotations

import pytest
from kubeharness import NS, Emulator, eventually

from infernetes.operator.kube import API_VERSION, DEPLOYMENTS, ENDPOINTS

pytestmark = pytest.mark.kmock(cls=Emulator)


def endpoint(name: str, **service_settings) -> dict:
    settings = {"num_allocations": 1, "num_threads": 2, "model_id": ".multilingual-e5-small", **service_settings}
    return {"apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"task_type": "text_embedding", "service": "elasticsearch", "service_settings": settings}}


async def test_create_makes_deployment_service_and_status(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("my-e5-model"))

    async def deployed():
        return await kube.get("apps/v1", "deployments", NS, "infernetes-my-e5-model")

    dep = await eventually(deployed)
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "InferenceEndpoint"
    # The operator writes the Deployment, then the Service: wait for the second as for the first.
    svc = await eventually(lambda: kube.get("v1", "services", NS, "infernetes-my-e5-model"))
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    async def status():
        cr = await kube.get(API_VERSION, ENDPOINTS, NS, "my-e5-model")
        return (cr.get("status") or {}).get("state") and cr["status"]

    st = await eventually(status)
    assert st["state"] == "starting" and st["target_allocation_count"] == 1 and st["allocations"] == "0/1"
    assert {c["type"] for c in st["conditions"]} == {"Ready", "ModelReady", "Progressing"}


async def get_cr(kube, name, plural=ENDPOINTS):
    return await kube.get(API_VERSION, plural, NS, name)


async def wait_status(kube, name, predicate, plural=ENDPOINTS, timeout=45):
    async def check():
        cr = await get_cr(kube, name, plural)
        st = (cr or {}).get("status") or {}
        return st if st.get("state") and predicate(st) else None

    return await eventually(check, timeout=timeout)


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


async def add_ready_pods(kube, deployment, count, ready=True):
    """Play the deployment controller and kubelet: pods for the Deployment, and its status."""
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    name = deployment["metadata"]["name"]
    existing = await kube.list("v1", "pods", NS, ",".join(f"{k}={v}" for k, v in
                                                          deployment["spec"]["selector"]["matchLabels"].items()))
    for i in range(len(existing), len(existing) + count):
        await kube.create("v1", "pods", NS, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-pod-{i}", "namespace": NS,
                                                           "labels": labels},
            "spec": {"containers": [{"name": "worker", "image": "x"}]},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        })
    current = await kube.get("apps/v1", "deployments", NS, name)
    replicas = current["spec"]["replicas"]
    total = len(existing) + count
    await kube.patch("apps/v1", "deployments", NS, name, {"status": {
        "replicas": total, "updatedReplicas": min(total, replicas), "readyReplicas": total if ready else 0,
        "observedGeneration": current["metadata"].get("generation")}}, subresource="status")


async def test_pods_ready_make_the_endpoint_ready(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("ready-one", num_allocations=2))
    dep = await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-ready-one"))
    await add_ready_pods(kube, dep, 1)
    st = await wait_status(kube, "ready-one", lambda s: s["allocation_count"] == 1)
    assert (st["state"], st["allocation_state"], st["allocations"]) == ("started", "started", "1/2")
    assert condition(st, "Ready")["status"] == "True" and condition(st, "Progressing")["status"] == "True"
    await add_ready_pods(kube, dep, 1)
    # Pods and the Deployment status arrive as separate events: the rollout counts as settled
    # once both are seen, so wait for the final state rather than the first "fully_allocated".
    st = await wait_status(kube, "ready-one", lambda s: s["allocation_state"] == "fully_allocated"
                           and condition(s, "Progressing")["status"] == "False")
    assert st["allocations"] == "2/2" and condition(st, "Progressing")["reason"] == "Stable"
    assert st["selector"] == "infernetes.dev/deployment=ready-one"


async def test_spec_update_scales_the_deployment(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("scaled"))
    await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-scaled"))
    # What `kubectl scale ie/scaled --replicas=3` does through the scale subresource.
    await kube.patch(API_VERSION, ENDPOINTS, NS, "scaled", {"spec": {"service_settings": {"num_allocations": 3}}})

    async def replicas():
        d = await kube.get("apps/v1", "deployments", NS, "infernetes-scaled")
        return d["spec"]["replicas"] == 3

    await eventually(replicas)
    cr = await get_cr(kube, "scaled")
    st = await wait_status(kube, "scaled", lambda s: s.get("observedGeneration") == cr["metadata"]["generation"])
    assert st["target_allocation_count"] == 3


async def test_invalid_spec_reports_and_creates_nothing(operator, kube, cluster):
    bad = endpoint("bad-threads", num_threads=3)  # the CRD's CEL rule would refuse it; the operator too
    await kube.create(API_VERSION, ENDPOINTS, NS, bad)
    st = await wait_status(kube, "bad-threads", lambda s: s["state"] == "failed")
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "[num_threads] must be a power of 2" in ready["message"]
    assert await kube.get("apps/v1", "deployments", NS, "infernetes-bad-threads") is None

    async def warned():
        events = await kube.list("v1", "events", NS)
        return [e for e in events if e.get("reason") == "InvalidSpec"]

    (event,) = (await eventually(warned))[:1]
    assert event["type"] == "Warning" and "[num_threads]" in event["message"]


async def test_unknown_model_and_task_mismatch(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("unknown-model", model_id="not-declared"))
    st = await wait_status(kube, "unknown-model", lambda s: s["state"] == "failed")
    assert condition(st, "Ready")["reason"] == "ModelNotFound"
    assert "Could not find trained model [not-declared]" in st["reason"]
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("mismatch", model_id=".elser_model_2"))
    st = await wait_status(kube, "mismatch", lambda s: s["state"] == "failed")
    assert "serves the [sparse_embedding] task" in st["reason"]


async def test_deletion_removes_the_workload(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("short-lived"))
    await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-short-lived"))
    cr = await get_cr(kube, "short-lived")
    assert cr["metadata"].get("finalizers") == ["infernetes.dev/protect-shared-deployment"]
    await kube.delete(API_VERSION, ENDPOINTS, NS, "short-lived")

    async def gone():
        return (await get_cr(kube, "short-lived") is None
                and await kube.get("apps/v1", "deployments", NS, "infernetes-short-lived") is None
                and await kube.get("v1", "services", NS, "infernetes-short-lived") is None)

    await eventually(gone)


def model_deployment(name, model_id, **spec):
    return {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"model_id": model_id, **spec}}


async def test_deployment_reuse_and_protected_deletion(operator, kube):
    md = model_deployment("elser", ".elser_model_2", deployment_id=".elser_model_2", number_of_allocations=2)
    await kube.create(API_VERSION, DEPLOYMENTS, NS, md)
    workload = await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-elser-model-2-" +
                                                 __import__("hashlib").sha256(b".elser_model_2").hexdigest()[:6]))
    assert workload["spec"]["replicas"] == 2
    reuse = {"apiVersion": API_VERSION, "kind": "InferenceEndpoint",
             "metadata": {"name": "use-existing-deployment", "namespace": NS},
             "spec": {"task_type": "sparse_embedding", "service": "elasticsearch", "inference_id":
                      "use_existing_deployment", "service_settings": {"deployment_id": ".elser_model_2"}}}
    await kube.create(API_VERSION, ENDPOINTS, NS, reuse)
    await add_ready_pods(kube, workload, 2)
    st = await wait_status(kube, "use-existing-deployment", lambda s: s["allocation_count"] == 2)
    assert st["model_id"] == ".elser_model_2" and st["deployment_id"] == ".elser_model_2"
    reuse_cr = await get_cr(kube, "use-existing-deployment")
    assert not reuse_cr["metadata"].get("finalizers")  # nothing depends on it: no finalizer
    deployments = await kube.list("apps/v1", "deployments", NS)
    assert len(deployments) == 1  # the reusing endpoint created no workload

    await kube.delete(API_VERSION, DEPLOYMENTS, NS, "elser")

    async def blocked():
        events = await kube.list("v1", "events", NS)
        return [e for e in events if e.get("reason") == "DeletionBlocked"]

    (event,) = (await eventually(blocked))[:1]
    assert "[use_existing_deployment]" in event["message"]
    assert await get_cr(kube, "elser", DEPLOYMENTS) is not None  # held by the finalizer
    await kube.delete(API_VERSION, ENDPOINTS, NS, "use-existing-deployment")

    async def released():
        return await get_cr(kube, "elser", DEPLOYMENTS) is None

    await eventually(released, timeout=30)


async def test_forced_deletion(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("owner"))
    await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-owner"))
    borrower = endpoint("borrower")
    borrower["spec"]["service_settings"] = {"deployment_id": "owner"}
    await kube.create(API_VERSION, ENDPOINTS, NS, borrower)
    await kube.patch(API_VERSION, ENDPOINTS, NS, "owner",
                     {"metadata": {"annotations": {"infernetes.dev/force-delete": "true"}}})
    await kube.delete(API_VERSION, ENDPOINTS, NS, "owner")

    async def gone():
        return await get_cr(kube, "owner") is None

    await eventually(gone)
    st = await wait_status(kube, "borrower", lambda s: s["state"] == "failed")
    assert "Could not find deployment [owner]" in st["reason"]


async def test_num_threads_change_is_refused(operator, kube):
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("fixed-threads"))
    before = await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-fixed-threads"))
    await kube.patch(API_VERSION, ENDPOINTS, NS, "fixed-threads", {"spec": {"service_settings": {"num_threads": 4}}})
    st = await wait_status(kube, "fixed-threads", lambda s: "[num_threads] cannot be updated" in s.get("reason", ""))
    assert st["state"] == "failed"
    after = await kube.get("apps/v1", "deployments", NS, "infernetes-fixed-threads")
    assert after["spec"]["template"] == before["spec"]["template"]


async def test_restart_converges_without_churn(kube, kube_config, operator_settings, cluster):
    from kubeharness import RunningOperator

    first = RunningOperator(kube_config, operator_settings)
    await first.start()
    await kube.create(API_VERSION, ENDPOINTS, NS, endpoint("survivor"))
    dep = await eventually(lambda: kube.get("apps/v1", "deployments", NS, "infernetes-survivor"))
    await add_ready_pods(kube, dep, 1)
    await wait_status(kube, "survivor", lambda s: s["allocation_state"] == "fully_allocated")
    await first.stop()
    writes_before = [w for w in cluster.writes if w[1] in ("deployments", "services")]
    second = RunningOperator(kube_config, operator_settings)
    await second.start()
    try:
        await second.wait_reconciled("survivor")  # its resume handler ran to the end
        # ... and a full round of the status loop after it (a status write that changes nothing is skipped).
        await wait_status(kube, "survivor", lambda s: s["allocation_state"] == "fully_allocated")
    finally:
        await second.stop()
    writes_after = [w for w in cluster.writes if w[1] in ("deployments", "services")]
    assert writes_after == writes_before, "a restart must not create or patch workloads that are already right"
    assert len(await kube.list("apps/v1", "deployments", NS)) == 1
