"""The six request bodies of Elasticsearch's documentation, end to end in the embedded runtime.

With no model hub here, the built-in ids are installed the air-gapped way (``models import`` of a
local folder): MiniLM stands in for E5, the 2-layer SPLADE for ELSER, the session's trained
cross-encoder for Elastic Rerank, MiniLM for the Eland-uploaded msmarco model.
"""

from __future__ import annotations

import pytest
from es_examples import DOCUMENTED_BODIES, DOCUMENTED_RESPONSE
from helpers import ServerThread, deployment_stats

from infernetes.operator.embedded import EmbeddedOptions
from infernetes.worker.download import E5_PROMPTS
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory, minilm_dir, splade_dir, reranker_dir):
    data_dir = tmp_path_factory.mktemp("seed")
    store = ModelStore(data_dir / "models")
    store.import_folder(minilm_dir, ".multilingual-e5-small", overrides={"prompts": E5_PROMPTS})
    store.import_folder(splade_dir, ".elser_model_2")
    store.import_folder(reranker_dir, ".rerank-v1")
    store.import_folder(minilm_dir, "msmarco-MiniLM-L12-cos-v5")
    # The documentation's adaptive example asks for at least 3 allocations: more than 2-core machines hold, which
    # the server refuses (429) unless told to overcommit.
    with ServerThread(data_dir, EmbeddedOptions(max_allocated_processors=4)) as srv, srv.client(timeout=120) as c:
        yield c


def put(client, index):
    task, inference_id, body = DOCUMENTED_BODIES[index]
    resp = client.put(f"/_inference/{task}/{inference_id}", json=body)
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["inference_id"] == inference_id and created["task_type"] == task
    assert created["chunking_settings"] == {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}
    return created


def test_elser_with_adaptive_allocations(client):
    created = put(client, 0)
    assert created["service_settings"]["adaptive_allocations"] == {
        "enabled": True, "min_number_of_allocations": 1, "max_number_of_allocations": 4}
    assert "num_allocations" not in created["service_settings"]
    out = client.post("/_inference/sparse_embedding/my-elser-model", json={"input": "what causes the northern lights"})
    assert "northern" in out.json()["sparse_embedding"][0]["embedding"]
    assert deployment_stats(client, "my-elser-model")["allocation_status"]["allocation_count"] >= 1
    assert client.delete("/_inference/my-elser-model").status_code == 200


def test_elastic_rerank(client):
    created = put(client, 1)
    assert created["task_settings"] == {"return_documents": True}
    out = client.post("/_inference/rerank/my-elastic-rerank", json={
        "query": "How do I bake bread at home?",
        "input": ["The stock market fell.", "Knead the dough with flour and yeast, then bake the bread."]})
    assert out.json()["rerank"][0]["index"] == 1
    assert client.delete("/_inference/my-elastic-rerank").status_code == 200


def test_e5_then_e5_with_adaptive_allocations(client):
    created = put(client, 2)
    assert created["service_settings"]["num_allocations"] == 1
    assert created["service_settings"]["model_id"] == ".multilingual-e5-small"
    out = client.post("/_inference/text_embedding/my-e5-model", json={"input": "hello", "input_type": "SEARCH"})
    assert len(out.json()["text_embedding"][0]["embedding"]) == 384
    assert client.delete("/_inference/my-e5-model").status_code == 200
    put(client, 4)
    d = deployment_stats(client, "my-e5-model")
    assert d["adaptive_allocations"] == {"enabled": True, "min_number_of_allocations": 3,
                                         "max_number_of_allocations": 10}
    assert d["allocation_status"]["target_allocation_count"] >= 3
    assert client.delete("/_inference/my-e5-model").status_code == 200


def test_eland_uploaded_model(client):
    put(client, 3)
    out = client.post("/_inference/my-msmarco-minilm-model", json={"input": ["a", "b"]})
    assert len(out.json()["text_embedding"]) == 2
    assert client.delete("/_inference/my-msmarco-minilm-model").status_code == 200


def test_use_existing_deployment_answers_like_the_documentation(client):
    started = client.post("/_ml/trained_models/.elser_model_2/deployment/_start",
                          params={"number_of_allocations": 2, "wait_for": "fully_allocated"})
    assert started.status_code == 200, started.text
    params = started.json()["assignment"]["task_parameters"]
    assert params["deployment_id"] == ".elser_model_2" and params["number_of_allocations"] == 2
    created = put(client, 5)
    assert created == DOCUMENTED_RESPONSE
    out = client.post("/_inference/sparse_embedding/use_existing_deployment", json={"input": "aurora"})
    assert out.status_code == 200
    refused = client.post("/_ml/trained_models/.elser_model_2/deployment/_stop")
    assert refused.status_code == 409
    assert "[use_existing_deployment]" in refused.json()["error"]["reason"]
    assert client.delete("/_inference/use_existing_deployment").status_code == 200
    assert client.post("/_ml/trained_models/.elser_model_2/deployment/_stop").json() == {"stopped": True}
    assert client.get("/_ml/trained_models/.elser_model_2/_stats").json()["trained_model_stats"][0].get(
        "deployment_stats") is None
