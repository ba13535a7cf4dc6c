"""The README says what the code does: the metrics table lists exactly the metrics the code exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from infernetes.operator.gateway import GatewayMetrics
from infernetes.operator.runtime.autoscaling import AutoscalerMetrics
from infernetes.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]


def exported() -> set[str]:
    names = set()
    worker = WorkerMetrics("d", "0")
    autoscaler = AutoscalerMetrics()
    autoscaler.record("d", 1, 0.5, 0)
    autoscaler.held.labels("d").set(0)
    gateway = GatewayMetrics()
    gateway.requests.labels("GET", "/", "200").inc()
    gateway.seconds.labels("GET", "/").observe(0.1)
    for registry in (worker.registry, autoscaler.registry, gateway.registry):
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                names.add(name + ("_total" if kind == "counter" and not name.endswith("_total") else ""))
    return names


def documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `(infernetes_[a-z_]+)` \|", readme, re.M))


def test_metrics_table_matches_the_code():
    assert documented() == exported()


def test_dashboard_uses_only_real_metrics():
    import json

    dashboard = json.loads((ROOT / "examples" / "grafana" / "infernetes.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert queries
    used = set(re.findall(r"infernetes_[a-z_]+", " ".join(queries)))
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert base <= exported() | {n.removesuffix("_total") for n in exported()}, base - exported()
