"""The gateway's access log: off unless asked, from the chart (gateway.accessLog) through the CLI to uvicorn.
A line per request cost the gateway about 4% of its CPU under short-input load (bench/cluster_overhead.py)."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn
from clusterbox.fixtures import render_chart

from infernetes.operator import cli
from infernetes.operator.kube import main as kube_main


def gateway_args(values: dict[str, Any] | None = None) -> list[str]:
    docs = render_chart(values)
    deployment = next(d for d in docs if d["kind"] == "Deployment"
                      and d["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_chart_asks_for_the_access_log_only_when_the_value_is_set():
    assert "--access-log" not in gateway_args()
    assert "--access-log" in gateway_args({"gateway": {"accessLog": True}})


@pytest.mark.parametrize(("argv", "expected"), [([], False), (["--access-log"], True)])
def test_infernetes_gateway_passes_the_access_log_choice_to_uvicorn(monkeypatch, argv, expected):
    seen: dict[str, Any] = {}
    monkeypatch.setattr(kube_main.KubeConfig, "load", staticmethod(lambda path: object()))
    monkeypatch.setattr(kube_main, "_gateway_namespace", lambda config, namespaces: "ns")
    monkeypatch.setattr(kube_main, "build_cluster_app", lambda *a, **kw: "the app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["gateway", "--namespace", "ns", *argv])
    assert exit_.value.code in (0, None)
    assert seen["app"] == "the app" and seen["access_log"] is expected
