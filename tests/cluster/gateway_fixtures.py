"""Fixtures of the gateway, security and placement tests on the cluster box: a box with the project's
CRDs, an async client of the product (the operator's own `Kube`) pointed at it, and the helpers that
stand in for what the box does not run (a ReplicaSet's pod, the kubelet's readiness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from clusterbox import ClusterBox
from clusterbox.fixtures import api_box

from infernetes.operator.kube import API_VERSION
from infernetes.operator.kube.client import Kube, KubeConfig

NS = "search"


@pytest.fixture
def gbox() -> Iterator[ClusterBox]:
    """A fresh box (it starts in milliseconds) with the project's CRDs and the test namespace."""
    # No controllers: these tests write the worker pods themselves, as a kubelet-less cluster would show them.
    with api_box((NS,)) as box:
        yield box


@pytest.fixture
def gapi(gbox: ClusterBox) -> Iterator[httpx.Client]:
    with gbox.client() as c:
        yield c


def kube_config(box: ClusterBox, token: str | None = None) -> KubeConfig:
    value = token or box.admin_token
    return KubeConfig.for_token(box.url, lambda: value, ca_file=str(box.ca_path), namespace=NS)


@pytest.fixture
async def gkube(gbox: ClusterBox) -> AsyncIterator[Kube]:
    kube = Kube(kube_config(gbox))
    try:
        yield kube
    finally:
        await kube.close()


def endpoint_cr(name: str, *, lo: int | None = None, hi: int | None = None, **spec: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"num_threads": 1, "model_id": ".multilingual-e5-small"}
    if lo is not None:
        settings["adaptive_allocations"] = {"enabled": True, "min_number_of_allocations": lo,
                                            "max_number_of_allocations": hi}
    else:
        settings["num_allocations"] = 1
    return {"apiVersion": API_VERSION, "kind": "InferenceEndpoint", "metadata": {"name": name, "namespace": NS},
            "spec": {"task_type": "text_embedding", "service": "elasticsearch", "service_settings": settings, **spec}}


async def start_pod(kube: Kube, workload: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    """What the ReplicaSet controller would create for the workload: a pod of its template, not ready yet."""
    template = workload["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
           "spec": {"containers": [{"name": "worker", "image": "worker",
                                    "ports": [{"name": "http", "containerPort": port}]}]}}
    await kube.create("v1", "pods", NS, pod)
    await kube.patch("v1", "pods", NS, name, {"status": {"phase": "Pending", "podIP": "127.0.0.1"}},
                     subresource="status")
    return pod


async def set_ready(kube: Kube, name: str) -> None:
    """What the kubelet reports once the readiness probe passes."""
    await kube.patch("v1", "pods", NS, name, {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
        {"type": "Ready", "status": "True"}]}}, subresource="status")
