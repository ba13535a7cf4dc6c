"""Built-in models through the API: downloaded on first use with progress, clear failure without a hub;
deployments started, updated and stopped on their own."""

from __future__ import annotations

import time

import pytest
from helpers import ServerThread, es_error, put_endpoint, tiny_model_server
from hubserver import FakeHub

from infernetes.operator.embedded import EmbeddedOptions

pytestmark = pytest.mark.slow

E5 = {"service": "elasticsearch",
      "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".multilingual-e5-small"}}


@pytest.fixture(scope="module")
def hub(minilm_dir):
    with FakeHub() as h:
        h.add_folder("intfloat/multilingual-e5-small", minilm_dir)
        yield h


@pytest.fixture(scope="module")
def client(tmp_path_factory, hub):
    with ServerThread(tmp_path_factory.mktemp("builtins"), EmbeddedOptions(model_hub=hub.url)) as srv, \
            srv.client(timeout=120) as c:
        yield c


def test_first_use_downloads_with_progress_then_deploys(client, hub):
    hub.delay = 0.05  # ~20 MiB/s: the download takes a few seconds
    resp = client.put("/_inference/text_embedding/e5-downloaded?timeout=1s", json=E5)
    assert resp.status_code == 408, resp.text
    reason = es_error(resp)["reason"]
    assert "downloading the model" in reason and "e5-downloaded/_stats" in reason
    # While it downloads, _stats shows progress; the endpoint exists.
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        d = client.get("/_ml/trained_models/e5-downloaded/_stats").json()["trained_model_stats"][0][
            "deployment_stats"]
        if "model_download" in d:
            seen.append(d["model_download"]["percent"])
            assert d["state"] == "starting"
        if d["allocation_status"]["state"] == "fully_allocated":
            break
        time.sleep(0.2)
    hub.delay = 0
    assert seen and max(seen) > 0 and seen == sorted(seen)
    out = client.post("/_inference/e5-downloaded", json={"input": "hello", "input_type": "SEARCH"})
    assert out.status_code == 200
    models = client.get("/_ml/trained_models/.multilingual-e5-small").json()["trained_model_configs"]
    assert models[0]["model_id"] == ".multilingual-e5-small"
    # The platform-specific id is the same model: no second download.
    before = len(hub.requests)
    variant = {**E5, "service_settings": {**E5["service_settings"], "model_id": ".multilingual-e5-small_linux-x86_64"}}
    assert client.put("/_inference/text_embedding/e5-variant", json=variant).status_code == 200
    assert len(hub.requests) == before
    for eid in ("e5-downloaded", "e5-variant"):
        assert client.delete(f"/_inference/{eid}").status_code == 200


def test_without_a_hub_the_endpoint_reports_why(client, hub):
    hub.down = True
    try:
        body = {"service": "elasticsearch",
                "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".elser_model_2"}}
        resp = client.put("/_inference/sparse_embedding/no-hub", json=body)
        assert resp.status_code == 500
        reason = es_error(resp)["reason"]
        assert "Could not download model [.elser_model_2]" in reason
        assert "infernetes models import <folder>" in reason
        d = client.get("/_ml/trained_models/no-hub/_stats").json()["trained_model_stats"][0]["deployment_stats"]
        assert d["state"] == "failed" and "infernetes models import" in d["reason"]
        assert client.get("/_inference/no-hub").status_code == 200  # kept, in state failed
        inference = client.post("/_inference/no-hub", json={"input": "x"})
        assert inference.status_code == 503 and "failed" in es_error(inference)["reason"]
        assert client.delete("/_inference/no-hub").status_code == 200
    finally:
        hub.down = False


def test_builtin_task_mismatch_downloads_nothing(client, hub):
    before = len(hub.requests)
    body = {"service": "elasticsearch",
            "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".elser_model_2"}}
    resp = client.put("/_inference/text_embedding/wrong-task", json=body)
    assert resp.status_code == 400
    assert "serves the [sparse_embedding] task" in es_error(resp)["reason"]
    assert len(hub.requests) == before


@pytest.fixture(scope="module")
def local(tmp_path_factory, tiny_model_dir):
    with tiny_model_server(tmp_path_factory.mktemp("deployments"), tiny_model_dir) as srv, \
            srv.client(timeout=120) as c:
        yield c


@pytest.mark.parametrize(("params", "reason"), [
    ({"threads_per_allocation": 3}, "[threads_per_allocation] must be a power of 2"),
    ({"number_of_allocations": 0}, "[number_of_allocations] must be a positive integer"),
    ({"priority": "urgent"}, "[priority] must be one of [normal, low]"),
    ({"wait_for": "soon"}, "[wait_for] must be one of"),
    ({"number_of_allocations": "two"}, "[number_of_allocations] must be an integer"),
])
def test_start_parameters_are_validated(local, params, reason):
    resp = local.post("/_ml/trained_models/tiny/deployment/_start", params=params)
    assert resp.status_code == 400
    assert reason in es_error(resp)["reason"]
    assert local.get("/_ml/trained_models/tiny/_stats").json()["trained_model_stats"][0].get(
        "deployment_stats") is None


def test_start_update_stop(local):
    resp = local.post("/_ml/trained_models/tiny/deployment/_start", params={"deployment_id": "tiny-a"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["assignment"]["assignment_state"] == "started"
    again = local.post("/_ml/trained_models/tiny/deployment/_start", params={"deployment_id": "tiny-a"})
    assert again.status_code == 400 and "existing deployment with the same id [tiny-a]" in es_error(again)["reason"]
    scaled = local.post("/_ml/trained_models/tiny-a/deployment/_update", json={"number_of_allocations": 2})
    assert scaled.status_code == 200
    assert scaled.json()["assignment"]["task_parameters"]["number_of_allocations"] == 2
    assert put_endpoint(local, "text_embedding", "on-a", "tiny").status_code == 200
    borrow = local.put("/_inference/text_embedding/borrow-a", json={
        "service": "elasticsearch", "service_settings": {"deployment_id": "tiny-a"}})
    assert borrow.json()["service_settings"]["num_allocations"] == 2
    forced = local.post("/_ml/trained_models/tiny-a/deployment/_stop?force=true")
    assert forced.json() == {"stopped": True}
    assert local.get("/_inference/borrow-a").status_code == 404  # force took its endpoints with it
    missing = local.post("/_ml/trained_models/nope/deployment/_stop")
    assert missing.status_code == 404
    assert local.delete("/_inference/on-a").status_code == 200


def test_update_endpoint_allocations(local):
    assert put_endpoint(local, "text_embedding", "grow", "tiny").status_code == 200
    resp = local.put("/_inference/text_embedding/grow/_update", json={"service_settings": {"num_allocations": 2}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["service_settings"]["num_allocations"] == 2
    assert local.get("/_inference/grow").json()["endpoints"][0]["service_settings"]["num_allocations"] == 2
    threads = local.put("/_inference/grow/_update", json={"service_settings": {"num_threads": 2}})
    assert threads.status_code == 400 and "[num_threads] cannot be updated" in es_error(threads)["reason"]
    model = local.put("/_inference/grow/_update", json={"service_settings": {"model_id": "other"}})
    assert model.status_code == 400 and "[service_settings.model_id] cannot be updated" in es_error(model)["reason"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = local.get("/_ml/trained_models/grow/_stats").json()["trained_model_stats"][0]["deployment_stats"]
        if d["allocation_status"]["allocation_count"] == 2:
            break
        time.sleep(0.2)
    assert d["allocation_status"] == {"allocation_count": 2, "target_allocation_count": 2, "state": "fully_allocated"}
    assert local.delete("/_inference/grow").status_code == 200
