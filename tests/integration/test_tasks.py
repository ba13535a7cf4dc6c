"""The three tasks through the API with real weights: sparse embeddings, reranking, prompts, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import es_error, put_endpoint

pytestmark = pytest.mark.slow

AURORA = "Auroras appear when charged particles from the solar wind hit the atmosphere near the poles."
BREAD = "Mix flour, water, salt and yeast, knead the dough and bake it in a hot oven."
STOCKS = "The stock market fell sharply after the central bank raised interest rates."


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        for task, eid, model in [("sparse_embedding", "sparse", "splade"), ("rerank", "rr", "reranker"),
                                 ("text_embedding", "e5", "e5ish"), ("text_embedding", "plain", "minilm")]:
            resp = put_endpoint(c, task, eid, model)
            assert resp.status_code == 200, resp.text
        yield c
        for eid in ("sparse", "rr", "e5", "plain"):
            c.delete(f"/_inference/{eid}")


def sparse(client, texts, **extra):
    resp = client.post("/_inference/sparse_embedding/sparse", json={"input": texts, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()["sparse_embedding"]


def dot(a: dict, b: dict) -> float:
    return sum(w * b.get(t, 0.0) for t, w in a.items())


def test_sparse_embedding_tokens_and_relevance(client):
    query, aurora, bread = sparse(client, ["what causes the northern lights", AURORA, BREAD])
    assert query["is_truncated"] is False
    top = list(query["embedding"])[:3]  # sorted by weight
    assert set(top) == {"northern", "lights", "causes"}
    assert all(w > 0 for w in query["embedding"].values())
    assert len(query["embedding"]) < 100  # sparse: only non-zero weights
    assert dot(query["embedding"], aurora["embedding"]) > dot(query["embedding"], bread["embedding"])


def test_sparse_truncation_is_reported(client):
    long_text = " ".join(["aurora borealis"] * 400)
    (result,) = sparse(client, [long_text])
    assert result["is_truncated"] is True


def test_rerank_ranks_the_relevant_passage_first(client):
    docs = [STOCKS, BREAD, AURORA]
    resp = client.post("/_inference/rerank/rr", json={"query": "How do I bake bread at home?", "input": docs})
    assert resp.status_code == 200, resp.text
    ranked = resp.json()["rerank"]
    assert [r["index"] for r in ranked][0] == 1
    assert ranked[0]["text"] == BREAD  # return_documents defaults to true
    scores = [r["relevance_score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1


def test_rerank_return_documents_and_top_n(client):
    body = {"query": "what causes the northern lights", "input": [BREAD, AURORA, STOCKS]}
    no_docs = client.post("/_inference/rerank/rr", json={**body, "task_settings": {"return_documents": False}})
    assert all("text" not in r for r in no_docs.json()["rerank"])
    top1 = client.post("/_inference/rerank/rr", json={**body, "top_n": 1}).json()["rerank"]
    assert [r["index"] for r in top1] == [1]
    root = client.post("/_inference/rerank/rr", json={**body, "return_documents": False}).json()["rerank"]
    assert all("text" not in r for r in root)
    # Endpoint-level default: an endpoint created with return_documents false.
    created = client.put("/_inference/rerank/rr-quiet", json={
        "service": "elasticsearch", "service_settings": {"num_threads": 1, "deployment_id": "rr"},
        "task_settings": {"return_documents": False}})
    assert created.status_code == 200, created.text
    assert created.json()["task_settings"] == {"return_documents": False}
    quiet = client.post("/_inference/rerank/rr-quiet", json=body).json()["rerank"]
    assert all("text" not in r for r in quiet)
    loud = client.post("/_inference/rerank/rr-quiet", json={**body, "task_settings": {"return_documents": True}})
    assert all("text" in r for r in loud.json()["rerank"])
    assert client.delete("/_inference/rr-quiet").status_code == 200


def test_rerank_truncates_long_pairs(client):
    long_doc = " ".join(["bread flour yeast oven"] * 500)
    resp = client.post("/_inference/rerank/rr", json={"query": "bread " * 300, "input": [long_doc, STOCKS]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["rerank"][0]["index"] == 0


def test_rerank_needs_a_query(client):
    resp = client.post("/_inference/rerank/rr", json={"input": ["x"]})
    assert resp.status_code == 400
    assert "[query] is required" in es_error(resp)["reason"]


def test_input_type_applies_the_model_prompts(client):
    text = "northern lights"

    def embed(eid, value, **extra):
        r = client.post(f"/_inference/text_embedding/{eid}", json={"input": [value], **extra})
        assert r.status_code == 200, r.text
        return np.array(r.json()["text_embedding"][0]["embedding"])

    # e5ish has E5's prompts; minilm ("plain") none: SEARCH must equal embedding "query: " + text without prompts.
    np.testing.assert_allclose(embed("e5", text, input_type="SEARCH"), embed("plain", "query: " + text), atol=1e-5)
    np.testing.assert_allclose(embed("e5", text, input_type="ingest"), embed("plain", "passage: " + text), atol=1e-5)
    np.testing.assert_allclose(embed("e5", text), embed("plain", text), atol=1e-5)
    # task_settings.input_type is the default; the root input_type overrides it.
    np.testing.assert_allclose(embed("e5", text, task_settings={"input_type": "SEARCH"}),
                               embed("plain", "query: " + text), atol=1e-5)
    np.testing.assert_allclose(embed("e5", text, input_type="INGEST", task_settings={"input_type": "SEARCH"}),
                               embed("plain", "passage: " + text), atol=1e-5)
    resp = client.post("/_inference/text_embedding/e5", json={"input": [text], "input_type": "SOMETIMES"})
    assert resp.status_code == 400
    assert "[input_type] has an invalid value [SOMETIMES]" in es_error(resp)["reason"]


def test_chunked_inference(client):
    text = " ".join(f"Sentence {i} talks about the northern lights and solar wind." for i in range(60))
    resp = client.post("/_inference/text_embedding/plain?chunked=true", json={"input": [text, "short one"]})
    assert resp.status_code == 200, resp.text
    long_result, short_result = resp.json()["text_embedding"]
    chunks = long_result["chunks"]
    assert len(chunks) > 1  # default chunking: sentence, 250 words, overlap 1
    for c in chunks:
        assert text[c["start_offset"]:c["end_offset"]] == c["text"]
        assert len(c["text"].split()) <= 250
        assert len(c["embedding"]) == 384
    assert chunks[1]["start_offset"] < chunks[0]["end_offset"]  # one sentence of overlap
    assert short_result["chunks"][0]["text"] == "short one"
    sparse_resp = client.post("/_inference/sparse_embedding/sparse?chunked=true", json={"input": [text]})
    sparse_chunks = sparse_resp.json()["sparse_embedding"][0]["chunks"]
    assert len(sparse_chunks) == len(chunks) and "northern" in sparse_chunks[0]["embedding"]
    refused = client.post("/_inference/rerank/rr?chunked=true", json={"query": "q", "input": ["x"]})
    assert refused.status_code == 400


def test_truncated_embeddings_say_so(client):
    long_text = " ".join(["word"] * 600)
    result = client.post("/_inference/text_embedding/plain", json={"input": [long_text, "short"]}).json()
    first, second = result["text_embedding"]
    assert first["is_truncated"] is True and "is_truncated" not in second
