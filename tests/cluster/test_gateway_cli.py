"""`infernetes gateway` runs the REST gateway alone (the chart's gateway Deployment runs exactly this),
as the chart's gateway ServiceAccount: it serves what is in the cluster and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import free_port, kill_process_group, killed_with_parent, wait_for

from cluster.gateway_fixtures import NS, endpoint_cr
from infernetes.operator.kube.planner import workload_name

from .conftest import GATEWAY_SA, IE, RELEASE_NS

pytestmark = pytest.mark.slow  # starts a process


def test_infernetes_gateway_serves_the_cluster_alone(cluster_box, admin, tmp_path):
    assert admin.post(IE, json=endpoint_cr("e5")).status_code == 201
    kubeconfig = cluster_box.write_kubeconfig(tmp_path / "kubeconfig", cluster_box.token_for(RELEASE_NS, GATEWAY_SA),
                                              namespace=NS)
    port = free_port()
    infernetes = str(Path(sys.executable).with_name("infernetes"))
    env = {**os.environ, "INFERNETES_AUTH": "off", "HOME": str(tmp_path)}
    proc = subprocess.Popen([infernetes, "gateway", "--kubeconfig", str(kubeconfig), "--namespace", NS,
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=killed_with_parent)
    try:
        def listed() -> bool:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/_inference/e5", timeout=5)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.json()["endpoints"][0]["inference_id"] == "e5"

        wait_for(listed, 60, 0.1, "the gateway to serve the endpoint")
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (the exit status says SIGTERM).
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stdout.read()  # type: ignore[union-attr]
    finally:
        kill_process_group(proc.pid)
        proc.wait(10)


def test_infernetes_operator_leads_through_the_lease_and_hands_it_back(cluster_box, admin, tmp_path):
    """The chart's operator command line: --no-gateway with the Lease; its health port answers while it
    leads (or waits), and SIGTERM hands the Lease back so that a new replica takes over at once."""
    kubeconfig = cluster_box.write_kubeconfig(tmp_path / "kubeconfig", cluster_box.token_for(RELEASE_NS, "infernetes"),
                                              namespace=NS)
    port = free_port()
    infernetes = str(Path(sys.executable).with_name("infernetes"))
    env = {**os.environ, "HOME": str(tmp_path), "INFERNETES_STATUS_INTERVAL_S": "30",
           "INFERNETES_AUTOSCALE_INTERVAL_S": "30"}
    proc = subprocess.Popen([infernetes, "operator", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--no-gateway",
                             "--leader-election-lease", "infernetes-operator",
                             "--leader-election-namespace", RELEASE_NS, "--liveness-port", str(port),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=killed_with_parent)
    lease = f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/infernetes-operator"
    try:
        def leading() -> bool:
            assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["leading"]
            except httpx.HTTPError:
                return False

        wait_for(leading, 60, 0.1, "the operator to lead")
        holder = admin.get(lease).json()["spec"]["holderIdentity"]
        assert holder
        assert admin.post(IE, json=endpoint_cr("e5")).status_code == 201  # the leader reconciles it
        workload = f"/apis/apps/v1/namespaces/{NS}/deployments/{workload_name('e5')}"
        wait_for(lambda: admin.get(workload).status_code == 200,
                 30, 0.1, "the leader's reconcile")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert not admin.get(lease).json()["spec"].get("holderIdentity"), "the Lease was not handed back"
        assert "Traceback" not in proc.stdout.read()  # type: ignore[union-attr]
    finally:
        kill_process_group(proc.pid)
        proc.wait(10)
