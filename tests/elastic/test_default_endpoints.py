"""Elasticsearch's default endpoints (listed, reserved, created on first use) and ``GET _inference/_services``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerThread, es_error

from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

DEFAULTS = {".elser-2-elasticsearch": "sparse_embedding", ".multilingual-e5-small-elasticsearch": "text_embedding",
            ".rerank-v1-elasticsearch": "rerank"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, splade_dir: Path) -> Iterator[httpx.Client]:
    data_dir = tmp_path_factory.mktemp("defaults")
    # The built-in sparse model, as a pull (hub or Elastic's repository) would have stored it.
    ModelStore(data_dir / "models").import_folder(splade_dir, ".elser_model_2")
    with ServerThread(data_dir) as srv, srv.client(timeout=300) as c:
        yield c


def test_listed_and_reserved(client):
    listed = {e["inference_id"]: e for e in client.get("/_inference").json()["endpoints"]}
    for inference_id, task in DEFAULTS.items():
        ep = listed[inference_id]
        assert ep["task_type"] == task and ep["service"] == "elasticsearch"
        assert ep["service_settings"]["adaptive_allocations"] == {
            "enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 32}
        assert client.get(f"/_inference/{task}/{inference_id}").json()["endpoints"][0]["inference_id"] == inference_id
        assert inference_id in {e["inference_id"] for e in client.get(f"/_inference/{task}").json()["endpoints"]}
        resp = client.put(f"/_inference/{task}/{inference_id}", json={
            "service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": 1,
                                                            "model_id": ".elser_model_2"}})
        assert resp.status_code == 400 and "reserved inference ID" in es_error(resp)["reason"]
        resp = client.delete(f"/_inference/{task}/{inference_id}")
        assert resp.status_code == 400 and "reserved inference endpoint" in es_error(resp)["reason"]
    other = {e["inference_id"] for e in client.get("/_inference/rerank").json()["endpoints"]}
    assert ".elser-2-elasticsearch" not in other


def test_services(client):
    resp = client.get("/_inference/_services")
    assert resp.status_code == 200, resp.text
    (service,) = resp.json()
    assert service["service"] == "elasticsearch"
    assert set(service["task_types"]) == {"text_embedding", "sparse_embedding", "rerank"}
    assert service["configurations"]["num_threads"]["required"] is True
    assert client.get("/_inference/_services/rerank").json()[0]["service"] == "elasticsearch"
    assert client.get("/_inference/_services/completion").status_code == 400


def test_usable_on_first_request(client, splade_dir):
    from sentence_transformers import SparseEncoder

    text = "what causes the northern lights"
    resp = client.post("/_inference/sparse_embedding/.elser-2-elasticsearch", json={"input": [text]})
    assert resp.status_code == 200, resp.text
    got = resp.json()["sparse_embedding"][0]["embedding"]
    encoder = SparseEncoder(str(splade_dir), device="cpu")
    row = encoder.encode([text], convert_to_tensor=True).to_dense().numpy()[0]
    vocab = [t for t, _ in sorted(encoder.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    want = {vocab[i]: float(row[i]) for i in np.flatnonzero(row)}
    assert set(got) == set(want) and max(abs(got[t] - want[t]) for t in want) <= 1e-3
    # Created now: its deployment exists, still refused for DELETE.
    stats = client.get("/_ml/trained_models/.elser-2-elasticsearch/_stats").json()["trained_model_stats"][0]
    assert stats["deployment_stats"]["adaptive_allocations"]["min_number_of_allocations"] == 0
    assert client.delete("/_inference/.elser-2-elasticsearch").status_code == 400
