"""Lifecycle of the embedded runtime: restarts keep endpoints, dead workers come back, full queues say 429."""

from __future__ import annotations

import concurrent.futures
import signal

import psutil
import pytest
from helpers import ServerThread, deployment_stats, es_error, put_endpoint, wait_for, worker_pids

from infernetes.operator.embedded import EmbeddedOptions
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow


def worker_processes(deployment_id: str) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in worker_pids(deployment_id)]


def test_endpoints_survive_a_restart(tmp_path, tiny_model_dir):
    ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    with ServerThread(tmp_path) as first, first.client() as client:
        assert put_endpoint(client, "text_embedding", "kept", "tiny", num_allocations=2).status_code == 200
        before = client.post("/_inference/kept", json={"input": "persist me"}).json()
        assert len(worker_processes("kept")) == 2
    # The first server stopped its workers on the way out.
    wait_for(lambda: not worker_processes("kept"), timeout=30)
    with ServerThread(tmp_path) as second, second.client() as client:
        (ep,) = client.get("/_inference/kept").json()["endpoints"]
        assert ep["service_settings"]["num_allocations"] == 2
        wait_for(lambda: deployment_stats(client, "kept")["allocation_status"]["state"] == "fully_allocated")
        after = client.post("/_inference/kept", json={"input": "persist me"}).json()
        assert after == before


def test_a_killed_worker_is_replaced(server):
    with server.client() as client:
        assert put_endpoint(client, "text_embedding", "victim", "tiny").status_code == 200
        (proc,) = worker_processes("victim")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Requests keep being answered once the replacement is up; the restart is visible in _stats.
        wait_for(lambda: deployment_stats(client, "victim")["nodes"][0].get("restart_count") == 1)
        stats = wait_for(lambda: (s := deployment_stats(client, "victim"))["state"] == "started"
                         and s["allocation_status"]["state"] == "fully_allocated" and s)
        assert stats["nodes"][0]["routing_state"]["routing_state"] == "started"
        (replacement,) = worker_processes("victim")
        assert replacement.pid != proc.pid
        assert client.post("/_inference/victim", json={"input": "still here"}).status_code == 200
        assert client.delete("/_inference/victim").status_code == 200
        wait_for(lambda: not worker_processes("victim"), timeout=30)


def test_deleting_an_endpoint_stops_its_zygote_cleanly(server):
    with server.client() as client:
        assert put_endpoint(client, "text_embedding", "short-lived", "tiny").status_code == 200
        zygote = server.app.state.service.runtime.deployments["short-lived"].zygote
        assert zygote is not None and zygote.proc is not None
        assert client.delete("/_inference/short-lived").status_code == 200
        # It exited on its own when told to (not killed after the runtime's 10 s of patience).
        assert zygote.proc.returncode == 0


def test_full_queue_answers_429(tmp_path, minilm_dir):
    ModelStore(tmp_path / "models").import_folder(minilm_dir, "minilm")
    options = EmbeddedOptions(queue_capacity=8)
    long_text = " ".join(f"word{i}" for i in range(200))
    with ServerThread(tmp_path, options) as srv, srv.client() as client:
        assert put_endpoint(client, "text_embedding", "small-queue", "minilm").status_code == 200

        def call(_: int):
            return client.post("/_inference/small-queue", json={"input": [long_text] * 4})

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(call, range(48)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}
        assert 429 in statuses and 200 in statuses
        rejected = next(r for r in responses if r.status_code == 429)
        assert es_error(rejected)["type"] == "es_rejected_execution_exception"
        assert "queue is full" in es_error(rejected)["reason"]
        assert int(rejected.headers["retry-after"]) >= 1
        for r in responses:
            if r.status_code == 200:
                assert len(r.json()["text_embedding"]) == 4
        node = deployment_stats(client, "small-queue")["nodes"][0]
        assert node["rejected_execution_count"] == statuses.count(429)
