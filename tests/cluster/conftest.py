"""Fixtures of the operator's tests on the cluster box (issue 12): a box with the project's CRDs and
the chart's ServiceAccounts and RBAC as `helm install` renders them, and the product's operator
(kopf registry of handlers.build_registry + Reconciler) running in a thread against it,
authenticated as the chart's operator ServiceAccount, so anything the chart does not grant is a 403.

`cluster_box` has no Deployment controllers and no kubelet: tests write the pods and the statuses a
real cluster's controllers would (see `make_pod`, `set_pod_status`), so what they check is only the
operator's reaction to what the cluster shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from clusterbox import ClusterBox
from clusterbox.fixtures import api_box

from infernetes.operator.kube import API_VERSION
from infernetes.operator.kube.client import KubeConfig
from infernetes.operator.kube.main import OperatorThread
from infernetes.operator.kube.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "infernetes"
NS = "search"  # the namespace the endpoints live in (the chart's watchNamespaces)
RELEASE_NS = "infernetes-system"  # where the chart installs the operator and its ServiceAccount
OPERATOR_SA = "infernetes"
GATEWAY_SA = "infernetes-gateway"
IE = f"/apis/{API_VERSION}/namespaces/{NS}/inferenceendpoints"
MD = f"/apis/{API_VERSION}/namespaces/{NS}/modeldeployments"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
_RBAC_PATHS = {"Role": "roles", "RoleBinding": "rolebindings", "ClusterRole": "clusterroles",
               "ClusterRoleBinding": "clusterrolebindings"}


@pytest.fixture(scope="session")
def chart_rbac() -> list[dict[str, Any]]:
    """The chart's ServiceAccounts, Roles and bindings for an install watching NS (rendered once per session)."""
    import helm_python

    chart = helm_python.Chart.load(CHART)
    out = chart.render({"watchNamespaces": [NS]}, name="infernetes", namespace=RELEASE_NS, is_install=True)
    docs = [d for name, text in out.items() if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def install(api: httpx.Client, docs: list[dict[str, Any]]) -> None:
    """Create rendered objects through the API (as helm would), each at its kind's path."""
    for doc in docs:
        kind, ns = doc["kind"], doc["metadata"].get("namespace")
        if kind == "ServiceAccount":
            path = f"/api/v1/namespaces/{ns}/serviceaccounts"
        elif kind in ("Role", "RoleBinding"):
            path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{_RBAC_PATHS[kind]}"
        else:
            path = f"/apis/rbac.authorization.k8s.io/v1/{_RBAC_PATHS[kind]}"
        r = api.post(path, json=doc)
        assert r.status_code == 201, (kind, doc["metadata"]["name"], r.text)


@pytest.fixture
def cluster_box(chart_rbac: list[dict[str, Any]]) -> Iterator[ClusterBox]:
    """A fresh box: CRDs, the namespaces, the chart's ServiceAccounts and RBAC. No controllers, no kubelet."""
    with api_box((NS, RELEASE_NS)) as box:
        with box.client() as api:
            install(api, chart_rbac)
        yield box


@pytest.fixture
def admin(cluster_box: ClusterBox) -> Iterator[httpx.Client]:
    """The test's own client (cluster admin), standing in for kubectl, controllers and the kubelet."""
    with cluster_box.client() as c:
        yield c


def sa_config(box: ClusterBox, service_account: str = OPERATOR_SA) -> KubeConfig:
    """Client settings authenticating as one of the chart's ServiceAccounts."""
    token = box.token_for(RELEASE_NS, service_account)
    return KubeConfig.for_token(box.url, lambda: token, ca_file=str(box.ca_path), namespace=NS)


def operator_settings(**overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {"image": "registry.example/infernetes:test", "status_interval_s": 0.5,
                              "retry_delay_s": 1, "autoscale_interval_s": 30}
    return OperatorSettings(**{**values, **overrides})


class RunningOperator:
    """The product's operator (main.OperatorThread: build_registry + Reconciler under kopf) against the box,
    as the chart's operator ServiceAccount. `errors` collects what kopf logged at ERROR (a 403 shows there)."""

    def __init__(self, box: ClusterBox, settings: OperatorSettings, service_account: str = OPERATOR_SA) -> None:
        self.box = box
        self.settings = settings
        self.config = sa_config(box, service_account)
        self.thread: OperatorThread | None = None
        self.reconciles: dict[str, int] = {}  # resource name -> reconciles finished (written on kopf's loop)

    def start(self) -> RunningOperator:
        self.thread = OperatorThread(self.config, self.settings, [NS])
        build = self.thread.registry_factory

        def counting(reconciler: Any, *args: Any) -> Any:
            original = reconciler.reconcile

            async def reconcile(plural: str, body: dict[str, Any]) -> Any:
                try:
                    return await original(plural, body)
                finally:
                    name = body["metadata"]["name"]
                    self.reconciles[name] = self.reconciles.get(name, 0) + 1

            reconciler.reconcile = reconcile
            return build(reconciler, *args)

        self.thread.registry_factory = counting
        self.thread.start()
        if not self.thread.ready.wait(30):
            self.stop()
            raise RuntimeError(f"the operator did not start: {self.thread.error!r}")
        return self

    def reconciled(self, name: str, more_than: int = 0) -> bool:
        return self.reconciles.get(name, 0) > more_than

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop_flag.set()
            self.thread.join(30)
            assert not self.thread.is_alive(), "the operator did not stop"

    def __enter__(self) -> RunningOperator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture
def start_operator(cluster_box: ClusterBox) -> Iterator[Callable[..., RunningOperator]]:
    """Start the operator (settings overrides as keyword arguments); every one started is stopped at the end."""
    started: list[RunningOperator] = []

    def start(**overrides: Any) -> RunningOperator:
        op = RunningOperator(cluster_box, operator_settings(**overrides)).start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in reversed(started):
            op.stop()


@pytest.fixture
def operator(start_operator: Callable[..., RunningOperator]) -> RunningOperator:
    return start_operator()


# ---- what the tests write in the place of controllers and kubelet ----


def endpoint(name: str, *, model_id: str = ".multilingual-e5-small", allocations: int | None = 1,
             adaptive: tuple[int, int] | None = None, **settings: Any) -> dict[str, Any]:
    ss: dict[str, Any] = {"model_id": model_id, "num_threads": 1, **settings}
    if adaptive is not None:
        ss["adaptive_allocations"] = {"enabled": True, "min_number_of_allocations": adaptive[0],
                                      "max_number_of_allocations": adaptive[1]}
    elif allocations is not None:
        ss["num_allocations"] = allocations
    return {"apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"task_type": "text_embedding", "service": "elasticsearch", "service_settings": ss}}


def make_pod(admin: httpx.Client, workload: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod of the workload's template, as its ReplicaSet would create it."""
    template = workload["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}
    r = admin.post(PODS, json=pod)
    assert r.status_code == 201, r.text
    return r.json()


def set_pod_status(admin: httpx.Client, name: str, status: dict[str, Any]) -> None:
    """What the kubelet reports for a pod."""
    r = admin.patch(f"{PODS}/{name}/status", json={"status": status},
                    headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text


def eventually(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until the predicate holds: the timeout is a ceiling for a busy machine, never a pace."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def get(admin: httpx.Client, path: str) -> dict[str, Any] | None:
    r = admin.get(path)
    return r.json() if r.status_code == 200 else None
