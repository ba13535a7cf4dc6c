"""What a new user meets in the first hour: errors that say what to add, ?pretty on every answer
(errors too), and _stats that never says "starting" about a deployment that has failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ServerThread, es_error, put_endpoint

from infernetes.operator.records import Deployment
from infernetes.operator.runtime import AllocationStatus, DeploymentStatus
from infernetes.operator.service import deployment_stats

DEP = Deployment(deployment_id="d", model_id="m", task_type="text_embedding", num_threads=1, num_allocations=1)


@pytest.mark.parametrize("status,expected", [
    (DeploymentStatus("d", 1, failure="Could not download model [m]"), None),
    (DeploymentStatus("d", 1, [AllocationStatus("0", "started")], stopping=True), None),
    (DeploymentStatus("d", 1), {"allocation_count": 0, "target_allocation_count": 1, "state": "starting"}),
    (DeploymentStatus("d", 2, [AllocationStatus("0", "started")], failure="allocation 1 failed"),
     {"allocation_count": 1, "target_allocation_count": 2, "state": "started"}),
])
def test_allocation_status_only_while_starting_or_started(status, expected):
    # Elasticsearch's _stats sets allocation_status only for assignments in state starting or started.
    stats = deployment_stats(DEP, status, [])
    assert stats.get("allocation_status") == expected, stats
    if expected is None:
        assert stats["state"] in ("failed", "stopping")


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory):
    """The real server with an empty model store: enough for requests that fail before any model."""
    with ServerThread(tmp_path_factory.mktemp("first-hour")) as srv:
        yield srv


def test_pretty_applies_to_error_answers(bare_server):
    with bare_server.client() as client:
        body = {"service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 3,
                                                                 "model_id": "sentence-transformers__all-minilm-l6-v2"}}
        for resp in (client.get("/_inference/nonexistent?pretty"),
                     client.put("/_inference/text_embedding/my-endpoint?pretty", json=body),
                     client.get("/_no_such_route?pretty")):
            assert resp.status_code in (400, 404), resp.text
            assert resp.text.startswith('{\n  "error": {\n'), resp.text
            es_error(resp)
        assert "\n" not in client.get("/_inference/nonexistent").text


def test_missing_service_says_what_to_add(bare_server):
    with bare_server.client() as client:
        resp = client.put("/_inference/text_embedding/my-endpoint",
                          json={"service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "x"}})
        assert resp.status_code == 400
        assert 'add "service": "elasticsearch"' in es_error(resp)["reason"]


@pytest.mark.slow
def test_missing_input_says_what_to_add(server):
    with server.client() as client:
        assert put_endpoint(client, "text_embedding", "first-hour-input", "tiny").status_code == 200
        try:
            resp = client.post("/_inference/text_embedding/first-hour-input", json={"inputs": ["x"]})
            assert resp.status_code == 400 and "inputs" in es_error(resp)["reason"]  # the unknown field, first
            resp = client.post("/_inference/text_embedding/first-hour-input", json={"input_type": "SEARCH"})
            assert resp.status_code == 400
            assert 'missing [input]: add "input": "some text"' in es_error(resp)["reason"]
        finally:
            client.delete("/_inference/first-hour-input")
