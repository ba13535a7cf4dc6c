"""The REST gateway over real HTTP, with real worker processes and the real MiniLM model."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from es_examples import INVALID_BODIES
from helpers import es_error, put_endpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def minilm_endpoint(client):
    resp = put_endpoint(client, "text_embedding", "minilm-endpoint", "minilm")
    assert resp.status_code == 200, resp.text
    yield "minilm-endpoint"
    client.delete("/_inference/text_embedding/minilm-endpoint")


def embed(client, inference_id, texts, **extra):
    resp = client.post(f"/_inference/text_embedding/{inference_id}", json={"input": texts, **extra})
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["text_embedding"]])


def test_info_and_product_header(client):
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.headers["x-elastic-product"] == "Elasticsearch"
    assert resp.json()["tagline"] == "You Know, for Search"
    assert client.head("/").status_code == 200


def test_compatible_with_media_type_is_echoed(client):
    media = "application/vnd.elasticsearch+json; compatible-with=8"
    resp = client.get("/_inference", headers={"accept": media})
    assert resp.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=8"


def test_put_response_echoes_resolved_settings(client, minilm_endpoint):
    resp = client.get(f"/_inference/{minilm_endpoint}")
    assert resp.status_code == 200
    (ep,) = resp.json()["endpoints"]
    assert ep == {
        "inference_id": minilm_endpoint,
        "task_type": "text_embedding",
        "service": "elasticsearch",
        "service_settings": {
            "num_allocations": 1, "num_threads": 1, "model_id": "minilm", "deployment_id": minilm_endpoint,
            "dimensions": 384, "similarity": "cosine", "element_type": "float",
        },
        "chunking_settings": {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1},
    }
    assert client.get(f"/_inference/text_embedding/{minilm_endpoint}").json() == resp.json()
    listed = client.get("/_inference").json()["endpoints"]
    assert minilm_endpoint in [e["inference_id"] for e in listed]
    by_type = client.get("/_inference/text_embedding").json()["endpoints"]
    assert minilm_endpoint in [e["inference_id"] for e in by_type]
    # Only the default endpoint (Elasticsearch's .rerank-v1-elasticsearch) is a rerank endpoint here.
    assert [e["inference_id"] for e in client.get("/_inference/rerank").json()["endpoints"]] == [
        ".rerank-v1-elasticsearch"]


def test_embeddings_are_real(client, minilm_endpoint):
    query = "How do I bake bread at home?"
    recipe = "Mix flour, water, salt and yeast, let the dough rise, then bake it in a hot oven."
    stocks = "The stock market fell sharply after the central bank raised interest rates."
    q, r, s = embed(client, minilm_endpoint, [query, recipe, stocks])
    assert q.shape == (384,)
    np.testing.assert_allclose([np.linalg.norm(v) for v in (q, r, s)], 1.0, atol=1e-4)  # the model normalizes
    assert q @ r > 0.5 > 0.2 > q @ s
    # Same input, same vector, whether alone or batched with others.
    (alone,) = embed(client, minilm_endpoint, query)
    np.testing.assert_allclose(alone, q, atol=1e-5)


def test_concurrent_requests_all_answered(client, minilm_endpoint):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: embed(client, minilm_endpoint, [t])[0], texts))
    batch = embed(client, minilm_endpoint, texts)
    np.testing.assert_allclose(np.stack(results), batch, atol=1e-5)


def test_untyped_inference_route(client, minilm_endpoint):
    resp = client.post(f"/_inference/{minilm_endpoint}", json={"input": "hello"})
    assert resp.status_code == 200
    assert len(resp.json()["text_embedding"][0]["embedding"]) == 384


def test_stats_report_the_deployment(client, minilm_endpoint):
    embed(client, minilm_endpoint, ["count me"])
    resp = client.get(f"/_ml/trained_models/{minilm_endpoint}/_stats")
    assert resp.status_code == 200
    (entry,) = resp.json()["trained_model_stats"]
    d = entry["deployment_stats"]
    assert entry["model_id"] == "minilm"
    assert d["state"] == "started"
    assert d["allocation_status"] == {"allocation_count": 1, "target_allocation_count": 1, "state": "fully_allocated"}
    assert d["number_of_allocations"] == 1 and d["threads_per_allocation"] == 1
    assert d["queue_capacity"] == 1024
    assert d["inference_count"] >= 1
    (node,) = d["nodes"]
    assert node["routing_state"]["routing_state"] == "started"
    assert node["inference_count"] >= 1 and node["average_inference_time_ms"] > 0
    assert node["number_of_pending_requests"] == 0
    by_model = client.get("/_ml/trained_models/minilm/_stats").json()
    assert minilm_endpoint in [s["deployment_stats"]["deployment_id"] for s in by_model["trained_model_stats"]]
    every = client.get("/_ml/trained_models/_stats").json()
    assert every["count"] >= 2  # the deployment, and the tiny model with no deployment
    err = es_error(client.get("/_ml/trained_models/nothing-here/_stats"))
    assert err["type"] == "resource_not_found_exception"


@pytest.mark.parametrize(
    ("case", "task", "inference_id", "body", "status", "error_type", "reason"),
    INVALID_BODIES, ids=[c[0] for c in INVALID_BODIES],
)
def test_invalid_put_is_rejected_and_creates_nothing(client, case, task, inference_id, body, status, error_type,
                                                     reason):
    before = client.get("/_inference").json()
    resp = client.put(f"/_inference/{task}/{inference_id}", json=body)
    assert resp.status_code == status, resp.text
    err = es_error(resp)
    assert err["type"] == error_type
    assert reason in err["reason"]
    assert client.get("/_inference").json() == before


def test_existing_id_is_rejected(client, minilm_endpoint):
    resp = put_endpoint(client, "text_embedding", minilm_endpoint, "minilm")
    assert resp.status_code == 400
    err = es_error(resp)
    assert err["type"] == "resource_already_exists_exception"
    assert err["reason"] == f"Inference endpoint [{minilm_endpoint}] already exists"


def test_malformed_json_is_a_parse_error(client):
    resp = client.put("/_inference/text_embedding/x", content=b'{"service": ', headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert es_error(resp)["type"] == "parse_exception"


def test_unknown_endpoint_and_route(client):
    err = es_error(client.get("/_inference/nope"))
    assert err["type"] == "resource_not_found_exception"
    assert err["reason"] == "Inference endpoint not found [nope]"
    assert es_error(client.post("/_inference/text_embedding/nope", json={"input": "x"}))["reason"] == \
        "Inference endpoint not found [nope]"
    assert es_error(client.delete("/_inference/text_embedding/nope"))["type"] == "resource_not_found_exception"
    assert client.get("/no/such/route").status_code == 404
    assert client.patch("/_inference/x").status_code == 405


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "is missing [input]: add \"input\""),
        ({"input": []}, "[input] must not be empty"),
        ({"input": [1, 2]}, "[input] must be a string or an array of strings"),
        ({"input": "x", "input_type": "SIDEWAYS"}, "[input_type] has an invalid value [SIDEWAYS]"),
        ({"input": "x", "query": "q"}, "unknown fields [query]"),
        ({"input": "x", "task_settings": {"return_documents": True}}, "only applicable to the [rerank] task"),
        ({"input": ["x"] * 1025}, "at most 1024 are allowed"),
    ],
)
def test_invalid_inference_requests(client, minilm_endpoint, payload, reason):
    resp = client.post(f"/_inference/text_embedding/{minilm_endpoint}", json=payload)
    assert resp.status_code == 400, resp.text
    assert reason in es_error(resp)["reason"]


def test_wrong_task_type_on_inference(client, minilm_endpoint):
    resp = client.post(f"/_inference/sparse_embedding/{minilm_endpoint}", json={"input": "x"})
    assert resp.status_code == 400
    assert "does not match the inference endpoint type [text_embedding]" in es_error(resp)["reason"]


def test_create_get_delete_round_trip(client):
    resp = put_endpoint(client, "text_embedding", "round-trip", "tiny")
    assert resp.status_code == 200, resp.text
    assert resp.json()["service_settings"]["model_id"] == "tiny"
    assert client.get("/_inference/round-trip").status_code == 200
    deleted = client.delete("/_inference/text_embedding/round-trip")
    assert deleted.status_code == 200
    assert deleted.json() == {"acknowledged": True, "pipelines": []}
    assert client.get("/_inference/round-trip").status_code == 404
    assert client.get("/_ml/trained_models/round-trip/_stats").status_code == 404


def test_shared_deployment_and_protected_delete(client):
    assert put_endpoint(client, "text_embedding", "owner", "tiny").status_code == 200
    reuse = client.put("/_inference/text_embedding/borrower",
                       json={"service": "elasticsearch", "service_settings": {"deployment_id": "owner"}})
    assert reuse.status_code == 200, reuse.text
    assert reuse.json()["service_settings"] == {
        "num_allocations": 1, "num_threads": 1, "model_id": "tiny", "deployment_id": "owner",
        "dimensions": 32, "similarity": "cosine", "element_type": "float",
    }
    assert client.post("/_inference/borrower", json={"input": "shared"}).status_code == 200
    refused = client.delete("/_inference/owner")
    assert refused.status_code == 409
    assert "[borrower]" in es_error(refused)["reason"]
    assert client.delete("/_inference/borrower").status_code == 200
    assert client.delete("/_inference/owner").status_code == 200
