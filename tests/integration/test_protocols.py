"""The other protocols the gateway speaks (OpenAI, TEI, Cohere), driven by their real clients from PyPI,
against real workers; the same numbers on every protocol; and Elasticsearch's own parsers for its
``openai``, ``hugging_face`` and ``custom`` services (ported in tests/es_parsers.py) reading our answers."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from es_parsers import (
    ParseFailure,
    custom_rerank,
    custom_text_embeddings,
    hf_elser,
    hf_embeddings,
    hf_rerank,
    openai_embeddings,
)
from helpers import minilm_path

from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

TEXTS = ["the quick brown fox jumps over the lazy dog", "kubernetes runs inference endpoints", "hello"]
DOCS = ["paris is the capital of france", "the weather is nice today", "france is a country in europe"]
QUERY = "what is the capital of france?"
EMB, MRL, SPARSE, RERANK, E5 = "proto-minilm", "proto-mrl", "proto-splade", "proto-rerank", "proto-e5"


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def endpoints(server, client):
    # A MiniLM copy whose metadata says it was trained for shortened (Matryoshka) embeddings.
    ModelStore(server.data_dir / "models").import_folder(
        minilm_path(), "minilm-mrl", overrides={"options": {"matryoshka_dimensions": [384, 256, 128]}})
    made = []
    try:
        for task, inference_id, model in (("text_embedding", EMB, "minilm"), ("text_embedding", MRL, "minilm-mrl"),
                                          ("sparse_embedding", SPARSE, "splade"), ("rerank", RERANK, "reranker"),
                                          ("text_embedding", E5, "e5ish")):
            # A generous timeout: four deployments start on a loaded machine.
            resp = client.put(f"/_inference/{task}/{inference_id}?timeout=180s", json={
                "service": "elasticsearch",
                "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": model}})
            assert resp.status_code == 200, resp.text
            made.append((task, inference_id))
        yield
    finally:
        for task, inference_id in made:
            client.delete(f"/_inference/{task}/{inference_id}")


def es_vectors(client, inference_id, texts):
    resp = client.post(f"/_inference/text_embedding/{inference_id}", json={"input": texts})
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["text_embedding"]], dtype=np.float32)


def es_rerank(client, query, docs):
    resp = client.post(f"/_inference/rerank/{RERANK}", json={"input": docs, "query": query})
    assert resp.status_code == 200, resp.text
    return [(r["index"], np.float32(r["relevance_score"])) for r in resp.json()["rerank"]]


# -- the same numbers on every protocol ---------------------------------------------------------------


def test_every_protocol_gives_the_same_numbers(server, client, endpoints):
    """_inference, /v1/embeddings (float and base64, raw and through the openai and LangChain clients),
    TEI /embed and the TEI root (through huggingface_hub): one endpoint, one input, equal float32 bits."""
    import openai
    from huggingface_hub import InferenceClient
    from langchain_openai import OpenAIEmbeddings

    expected = es_vectors(client, EMB, TEXTS)
    assert expected.shape == (3, 384)
    seen = {}
    as_float = client.post("/v1/embeddings", json={"model": EMB, "input": TEXTS})
    seen["v1 float"] = np.array([d["embedding"] for d in as_float.json()["data"]], dtype=np.float32)
    as_b64 = client.post("/v1/embeddings", json={"model": EMB, "input": TEXTS, "encoding_format": "base64"})
    seen["v1 base64"] = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in as_b64.json()["data"]])
    seen["tei embed"] = np.array(client.post(f"/tei/{EMB}/embed", json={"inputs": TEXTS}).json(), dtype=np.float32)

    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    seen["openai client"] = np.array([d.embedding for d in oa.embeddings.create(model=EMB, input=TEXTS).data],
                                     dtype=np.float32)
    # Asked for explicitly, base64 comes back as the string (the client decodes only when it chose base64 itself).
    seen["openai client base64"] = np.array(
        [np.frombuffer(base64.b64decode(d.embedding), "<f4")
         for d in oa.embeddings.create(model=EMB, input=TEXTS, encoding_format="base64").data])
    lc = OpenAIEmbeddings(model=EMB, base_url=server.url + "/v1", api_key="unused", check_embedding_ctx_length=False,
                          max_retries=0)
    seen["langchain"] = np.array(lc.embed_documents(TEXTS), dtype=np.float32)
    query = np.array([lc.embed_query(TEXTS[2])], dtype=np.float32)  # one text alone, as embed_query sends it
    assert np.array_equal(query, es_vectors(client, EMB, [TEXTS[2]])), "langchain embed_query differs"
    for name, got in seen.items():
        assert got.shape == expected.shape, name
        assert np.array_equal(got, expected), f"{name} differs from _inference"
    # huggingface_hub sends one text per request: compare with _inference on that one text (a batch of
    # three pads to its longest text, which moves the last bits).
    hf = InferenceClient(model=f"{server.url}/tei/{EMB}")
    for text in TEXTS:
        got = np.asarray(hf.feature_extraction(text), dtype=np.float32).reshape(1, -1)
        assert np.array_equal(got, es_vectors(client, EMB, [text])), f"huggingface_hub differs on {text!r}"

    # Sparse: TEI's /embed_sparse (token ids) and the ELSER-style root ({token: weight}) against _inference.
    sparse = client.post(f"/_inference/sparse_embedding/{SPARSE}", json={"input": TEXTS}).json()["sparse_embedding"]
    root = client.post(f"/tei/{SPARSE}", json={"inputs": TEXTS}).json()
    assert [{t: np.float32(w) for t, w in r.items()} for r in root] == \
        [{t: np.float32(w) for t, w in s["embedding"].items()} for s in sparse]
    by_id = client.post(f"/tei/{SPARSE}/embed_sparse", json={"inputs": TEXTS}).json()
    tokens = client.post(f"/tei/{SPARSE}/tokenize", json={"inputs": TEXTS}).json()
    for row, s, toks in zip(by_id, sparse, tokens):
        assert [e["index"] for e in row] == sorted(e["index"] for e in row)
        assert len(row) == len(s["embedding"])
        assert sorted(np.float32(e["value"]) for e in row) == sorted(np.float32(w) for w in s["embedding"].values())
        # Every input token that carries weight appears under its own vocabulary id.
        ids = {e["index"] for e in row}
        assert {t["id"] for t in toks if t["text"].lower() in s["embedding"] and not t["special"]} <= ids

    # Rerank: Cohere v1/v2 (raw and the cohere client) and TEI /rerank against _inference.
    import cohere

    expected_rank = es_rerank(client, QUERY, DOCS)
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    got = co.rerank(model=RERANK, query=QUERY, documents=DOCS)
    assert [(r.index, np.float32(r.relevance_score)) for r in got.results] == expected_rank
    v1 = client.post("/v1/rerank", json={"model": RERANK, "query": QUERY, "documents": DOCS}).json()
    assert [(r["index"], np.float32(r["relevance_score"])) for r in v1["results"]] == expected_rank
    tei = client.post(f"/tei/{RERANK}/rerank", json={"query": QUERY, "texts": DOCS}).json()
    assert [(r["index"], np.float32(r["score"])) for r in tei] == expected_rank


def test_openai_client_dimensions_and_usage(server, client, endpoints):
    import openai

    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    full = es_vectors(client, MRL, TEXTS)
    short = oa.embeddings.create(model=MRL, input=TEXTS, dimensions=128, encoding_format="base64")
    got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in short.data])
    assert got.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    prefix = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(got, prefix, atol=1e-6)
    assert [d.index for d in short.data] == [0, 1, 2] and short.model == MRL

    # usage counts the tokens the model read: the same as TEI's /tokenize, special tokens included.
    tokens = client.post(f"/tei/{MRL}/tokenize", json={"inputs": TEXTS}).json()
    assert short.usage.prompt_tokens == short.usage.total_tokens == sum(len(t) for t in tokens)

    # A model whose metadata says nothing about Matryoshka refuses, with a clear, OpenAI-shaped error.
    with pytest.raises(openai.BadRequestError) as refused:
        oa.embeddings.create(model=EMB, input=TEXTS, dimensions=128)
    assert "not trained for shortened embeddings" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="not one of the sizes"):
        oa.embeddings.create(model=MRL, input="x", dimensions=100)
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="no-such-endpoint", input="x")
    with pytest.raises(openai.BadRequestError, match="text_embedding"):
        oa.embeddings.create(model=RERANK, input="x")
    models = {m.id for m in oa.models.list()}
    assert {EMB, MRL, SPARSE, RERANK} <= models


def test_token_id_inputs_are_the_same_text(client, endpoints):
    text = "kubernetes runs inference endpoints"
    ids = [t["id"] for t in client.post(f"/tei/{EMB}/tokenize", json={"inputs": text}).json()[0]]
    expected = es_vectors(client, EMB, [text])[0]
    for body in ({"model": EMB, "input": ids}, {"model": EMB, "input": [ids, ids]}):
        resp = client.post("/v1/embeddings", json=body)
        assert resp.status_code == 200, resp.text
        vectors = np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
        if len(vectors) == 1:  # the same one-row batch as the text's: the same bits
            assert np.array_equal(vectors[0], expected)
        else:  # a two-row batch: matrix kernels for other shapes may sum in another order (AVX-512 MKL does)
            assert np.array_equal(vectors[0], vectors[1])
            np.testing.assert_allclose(vectors[0], expected, rtol=1e-5, atol=1e-6)
    bad = client.post("/v1/embeddings", json={"model": EMB, "input": [10**9]})
    assert bad.status_code == 400 and "outside the model's vocabulary" in bad.json()["error"]["message"]


def test_prompt_names_pick_the_models_prompts(client, endpoints):
    """TEI's prompt_name picks the same prompt as Elasticsearch's input_type (E5: "query: ", "passage: ")."""
    for prompt_name, input_type in (("query", "SEARCH"), ("passage", "INGEST")):
        tei = np.array(client.post(f"/tei/{E5}/embed", json={"inputs": TEXTS, "prompt_name": prompt_name}).json(),
                       dtype=np.float32)
        es = client.post(f"/_inference/text_embedding/{E5}", json={"input": TEXTS, "input_type": input_type}).json()
        assert np.array_equal(tei, np.array([e["embedding"] for e in es["text_embedding"]], dtype=np.float32))
    plain = np.array(client.post(f"/tei/{E5}/embed", json={"inputs": TEXTS}).json(), dtype=np.float32)
    assert not np.array_equal(plain, tei)  # the prompt changes the vectors: the check above can fail
    tokens = client.post(f"/tei/{E5}/tokenize", json={"inputs": "hi", "prompt_name": "query"}).json()[0]
    assert [t["text"] for t in tokens if not t["special"]][:2] == ["query", ":"]


def test_tei_routes(client, endpoints):
    tokens = client.post(f"/tei/{EMB}/tokenize", json={"inputs": "Hello world"}).json()[0]
    assert tokens[0]["special"] and tokens[-1]["special"]
    assert [(t["text"], t["start"], t["stop"]) for t in tokens[1:-1]] == [("Hello", 0, 5), ("world", 6, 11)]
    plain = client.post(f"/tei/{EMB}/tokenize", json={"inputs": "Hello world", "add_special_tokens": False}).json()
    assert [t["id"] for t in plain[0]] == [t["id"] for t in tokens[1:-1]]

    info = client.get(f"/tei/{EMB}/info").json()
    assert info["model_id"] == "minilm" and info["max_input_length"] == 256 and "embedding" in info["model_type"]
    assert client.get(f"/tei/{RERANK}/info").json()["model_type"].keys() == {"reranker"}
    assert client.get(f"/tei/{EMB}/health").status_code == 200
    assert client.get("/tei/nope/health").status_code == 404

    # truncate: false refuses an input longer than the model reads; the default (true) cuts it.
    long = " ".join(["word"] * 600)
    refused = client.post(f"/tei/{EMB}/embed", json={"inputs": long, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error_type"] == "Validation"
    assert client.post(f"/tei/{EMB}/embed", json={"inputs": long}).status_code == 200

    top = client.post(f"/tei/{RERANK}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [r["text"] for r in top] == [DOCS[r["index"]] for r in top]
    assert client.post(f"/tei/{RERANK}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}
                       ).status_code == 400


# -- Elasticsearch as a client: its parsers read our answers --------------------------------------------


def test_es_parser_ports_accept_the_fixtures_of_their_sources():
    """The ports themselves, on the examples written in the Java sources' javadoc (so a port that
    drifted from its source fails here, not silently)."""
    # OpenAiEmbeddingsResponseEntity javadoc.
    fixture = {"object": "list", "data": [{"object": "embedding", "embedding": "AACAPwAAAEAAAEBA", "index": 0}],
               "model": "text-embedding-3-large", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert openai_embeddings(json.dumps(fixture).encode())[0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ParseFailure):
        openai_embeddings(b'{"data": [{"embedding": "AACAPwAAAA=="}]}')  # 7 bytes: not a multiple of 4
    # HuggingFaceEmbeddingsResponseEntity javadoc: both formats.
    assert len(hf_embeddings(b"[[0.1, 0.234], [0.34, 0.56]]")) == 2
    assert len(hf_embeddings(b'{"embeddings": [[0.1, 0.234], [0.34, 0.56]]}')) == 2
    # HuggingFaceElserResponseEntity javadoc.
    assert hf_elser(b'[{"the": 0.7226026, "to": 0.29198948}, {"wish": 0.123456}]')[1] == {"wish": np.float32(0.123456)}
    with pytest.raises(ParseFailure):
        hf_elser(b'[{"the": "0.7"}]')
    # HuggingFaceRerankResponseEntity: unknown fields are an error.
    assert hf_rerank(b'[{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]', top_n=1) == [(1, np.float32(0.9), None)]
    with pytest.raises(ParseFailure):
        hf_rerank(b'[{"index": 0, "score": 0.1, "rank": 1}]')
    # MapPathExtractor javadoc.
    doc = {"result": {"embeddings": [{"index": 0, "embedding": [2, 4]}, {"index": 1, "embedding": [1, 2]}]}}
    assert [v.tolist() for v in custom_text_embeddings(json.dumps(doc).encode(), "$.result.embeddings[*].embedding")] \
        == [[2.0, 4.0], [1.0, 2.0]]
    with pytest.raises(ParseFailure):
        custom_text_embeddings(b"[[1.0]]", "$.data[*].embedding")  # the custom service needs an object


def test_elasticsearch_services_read_our_answers(client, endpoints):
    """What Elasticsearch's services send (request entities) and read (response entities), against our routes:
    openai -> POST /v1/embeddings; hugging_face -> POST /tei/{id} (text_embedding, rerank); hugging_face_elser ->
    POST /tei/{id} (sparse); custom -> the README's request templates and json_parser paths."""
    expected = es_vectors(client, EMB, TEXTS)
    # OpenAiEmbeddingsRequestEntity: {input, model, user?, dimensions? (only when set by the user)}.
    oa = client.post("/v1/embeddings", json={"input": TEXTS, "model": EMB, "user": "es-node-1"})
    assert np.array_equal(np.array(openai_embeddings(oa.content)), expected)
    mrl = client.post("/v1/embeddings", json={"input": TEXTS, "model": MRL, "dimensions": 256})
    assert {v.shape for v in openai_embeddings(mrl.content)} == {(256,)}
    # HuggingFaceEmbeddingsRequestEntity: {inputs: [...]}.
    hf = client.post(f"/tei/{EMB}", json={"inputs": TEXTS})
    assert np.array_equal(np.array(hf_embeddings(hf.content)), expected)
    # HuggingFaceRerankRequestEntity: {documents, query, return_documents?, top_n?}.
    body = {"documents": DOCS, "query": QUERY, "return_documents": True, "top_n": 2}
    ranked = hf_rerank(client.post(f"/tei/{RERANK}", json=body).content, top_n=2)
    want = es_rerank(client, QUERY, DOCS)[:2]
    assert [(i, s) for i, s, _ in ranked] == want and [t for _, _, t in ranked] == [DOCS[i] for i, _ in want]
    # hugging_face_elser: {inputs: [...]} -> [{token: weight}].
    elser = hf_elser(client.post(f"/tei/{SPARSE}", json={"inputs": TEXTS}).content)
    sparse = client.post(f"/_inference/sparse_embedding/{SPARSE}", json={"input": TEXTS}).json()["sparse_embedding"]
    assert elser == [{t: np.float32(w) for t, w in s["embedding"].items()} for s in sparse]
    # custom, text_embedding: request "{\"input\": ${input}, \"model\": \"...\"}", path $.data[*].embedding.
    custom = client.post("/v1/embeddings", content=json.dumps({"input": TEXTS, "model": EMB}))
    assert np.array_equal(np.array(custom_text_embeddings(custom.content, "$.data[*].embedding")), expected)
    # custom, rerank: "{\"model\": \"...\", \"query\": ${query}, \"documents\": ${input}}" against /v1/rerank.
    co = client.post("/v1/rerank", json={"model": RERANK, "query": QUERY, "documents": DOCS, "return_documents": True})
    parsed = custom_rerank(co.content, "$.results[*].relevance_score", "$.results[*].index",
                           "$.results[*].document.text")
    assert [(i, s) for i, s, _ in parsed] == es_rerank(client, QUERY, DOCS)
    assert [t for _, _, t in parsed] == [DOCS[i] for i, _, _ in parsed]


def test_errors_reach_the_clients_as_their_own_exceptions(server, endpoints):
    import cohere
    import openai
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    oa = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        oa.embeddings.create(model=EMB, input=[])
    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    with pytest.raises(cohere.errors.NotFoundError):
        co.rerank(model="nope", query="q", documents=["d"])
    with pytest.raises(HfHubHTTPError):
        InferenceClient(model=f"{server.url}/tei/nope").feature_extraction("x")
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        assert c.post(f"/tei/{EMB}/embed", json={"inputs": "x", "normalize": "yes"}).json()["error_type"] == "Validation"
