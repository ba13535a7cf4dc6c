"""Issue 12 #13: the operator's API load grows linearly with the endpoints (it grew with their square:
every resource's check listed every resource). Counted on the cluster box (which records each request)
with bench/api_load.py's measurement, in calls, not time: bring 1, 5 and 10 endpoints up, then let
every endpoint be reconciled 3 more times."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from clusterbox import ClusterBox
from infernetes.operator.kube.client import Kube, KubeConfig

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_api_load", ROOT / "bench" / "api_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_api_calls_grow_linearly_with_the_endpoints() -> None:
    bench = _bench()
    rows = {n: bench.measure(n, rounds=3, settings={"status_interval_s": 0.3}) for n in (1, 5, 10)}
    startup = {n: r["startup_calls"] for n, r in rows.items()}
    slope = (startup[5] - startup[1]) / 4
    assert 0 < slope <= 15, f"calls per endpoint to bring it up: {slope} ({startup})"
    assert startup[10] <= startup[5] + 5 * slope * 1.5 + 10, f"not linear: {startup}"
    for n, row in rows.items():
        # Reconciles read the watch cache: the resyncs themselves cost no request, whatever the count.
        assert row["steady_calls"] <= 3 + n, f"{n} endpoints, 3 resyncs each: {row['by_verb_and_resource']}"


async def test_429_retry_after_is_honoured(cluster_box: ClusterBox) -> None:
    """API priority and fairness answers 429 with Retry-After: the client waits and tries again."""
    import time

    kube = Kube(KubeConfig.for_token(cluster_box.url, lambda: cluster_box.admin_token,
                                     ca_file=str(cluster_box.ca_path)))
    try:
        cluster_box.faults.inject("429", count=2, resource="namespaces", verb="get", retry_after=1)
        began = time.monotonic()
        ns = await kube.get("v1", "namespaces", None, "search")
        assert ns is not None and ns["metadata"]["name"] == "search"
        assert time.monotonic() - began >= 1.9, "waited Retry-After (1 s) twice"
        assert cluster_box.faults.served["429"] == 2
    finally:
        await kube.close()


@pytest.mark.slow
def test_children_are_watched_with_a_server_side_label_selector(cluster_box: ClusterBox, operator: Any) -> None:
    """kopf's `labels=` filter is client-side: without a selector on the request, the operator would receive
    every pod and Deployment of the namespace. The box's open watches show what was asked for."""
    from cluster.conftest import eventually

    def watches() -> dict[str, Any]:
        return cluster_box.server.call(lambda: {w.res.plural: w.match for w in cluster_box.server.watchers})
    seen = eventually(lambda: (w := watches()) and {"pods", "deployments", "services", "poddisruptionbudgets",
                                                      "inferenceendpoints"} <= set(w) and w,
                      what="the operator's watches")
    theirs = {"metadata": {"name": "web", "namespace": "search", "labels": {"app": "web"}}}
    ours = {"metadata": {"name": "w", "namespace": "search", "labels": {"app.kubernetes.io/managed-by": "infernetes"}}}
    for plural in ("pods", "deployments", "services", "poddisruptionbudgets"):
        assert not seen[plural](theirs) and seen[plural](ours), plural
    assert seen["inferenceendpoints"](theirs), "the custom resources are watched whole"
