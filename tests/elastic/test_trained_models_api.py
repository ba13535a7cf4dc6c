"""Elastic's trained-model upload APIs (what Eland calls), with a tiny model traced as Eland traces one.

Uploads are checked as Elasticsearch checks them; a complete upload serves through the batching
engine and equals the original sentence-transformers model.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerThread, es_error

pytestmark = pytest.mark.slow

TEXTS = ["How do I bake bread at home?", "The stock market fell today.", "a"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elastic-api")


@pytest.fixture(scope="module")
def client(data_dir: Path) -> Iterator[httpx.Client]:
    with ServerThread(data_dir) as srv, srv.client(timeout=120) as c:
        yield c


def upload(client: httpx.Client, model_id: str, files: tuple[bytes, dict, dict], chunk: int = 100_000,
           order: list[int] | None = None, vocab: bool = True) -> None:
    data, config, vocabulary = files
    resp = client.put(f"/_ml/trained_models/{model_id}", json=config)
    assert resp.status_code == 200, resp.text
    parts = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for i in order or range(len(parts)):
        resp = client.put(f"/_ml/trained_models/{model_id}/definition/{i}", json={
            "definition": base64.b64encode(parts[i]).decode(), "total_definition_length": len(data),
            "total_parts": len(parts)})
        assert resp.status_code == 200, resp.text
    if vocab:
        resp = client.put(f"/_ml/trained_models/{model_id}/vocabulary", json=vocabulary)
        assert resp.status_code == 200, resp.text


def config_of(client: httpx.Client, model_id: str) -> dict:
    resp = client.get(f"/_ml/trained_models/{model_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()["trained_model_configs"][0]


def test_upload_start_infer_equals_the_original(client, tiny_elastic, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    data, config, vocab = tiny_elastic
    n_parts = -(-len(data) // 100_000)
    # Parts in any order, one of them twice (idempotent), the vocabulary last: complete only then.
    order = [n_parts - 1, *range(n_parts - 1), 0]
    upload(client, "tiny-upload", tiny_elastic, order=order, vocab=False)
    assert config_of(client, "tiny-upload")["fully_defined"] is False
    resp = client.post("/_ml/trained_models/tiny-upload/deployment/_start")
    assert resp.status_code == 400 and "not fully defined" in es_error(resp)["reason"], resp.text
    resp = client.put("/_ml/trained_models/tiny-upload/vocabulary", json=vocab)
    assert resp.status_code == 200, resp.text
    got_config = config_of(client, "tiny-upload")
    assert got_config["fully_defined"] is True
    assert got_config["inference_config"] == config["inference_config"]
    assert got_config["prefix_strings"] == {"search": "query: "}

    resp = client.post("/_ml/trained_models/tiny-upload/deployment/_start?wait_for=started")
    assert resp.status_code == 200, resp.text
    resp = client.post("/_ml/trained_models/tiny-upload/_infer", json={"docs": [{"text_field": t} for t in TEXTS]})
    assert resp.status_code == 200, resp.text
    got = np.array([r["predicted_value"] for r in resp.json()["inference_results"]])
    want = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(TEXTS)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999, cosine

    # An endpoint on the uploaded model; the search prefix applies to SEARCH inputs only.
    resp = client.put("/_inference/text_embedding/tiny-upload-ep", json={
        "service": "elasticsearch", "service_settings": {"deployment_id": "tiny-upload", "num_threads": 1}})
    assert resp.status_code == 200, resp.text
    search = client.post("/_inference/tiny-upload-ep", json={"input": TEXTS[:1], "input_type": "SEARCH"}).json()
    ingest = client.post("/_inference/tiny-upload-ep", json={"input": TEXTS[:1], "input_type": "INGEST"}).json()
    prefixed = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(["query: " + TEXTS[0]])[0]
    np.testing.assert_allclose(search["text_embedding"][0]["embedding"], prefixed, atol=1e-4)
    np.testing.assert_allclose(ingest["text_embedding"][0]["embedding"], want[0], atol=1e-4)

    # Deployed: DELETE is refused unless forced; forced, the deployment, its endpoint and the model go.
    resp = client.delete("/_ml/trained_models/tiny-upload")
    assert resp.status_code == 409 and "currently deployed" in es_error(resp)["reason"]
    resp = client.delete("/_ml/trained_models/tiny-upload?force=true")
    assert resp.status_code == 200, resp.text
    assert client.get("/_ml/trained_models/tiny-upload").status_code == 404
    assert client.get("/_inference/tiny-upload-ep").status_code == 404


BASE = {"model_type": "pytorch", "input": {"field_names": ["text_field"]},
        "inference_config": {"text_embedding": {"tokenization": {"bert": {"do_lower_case": True}}}}}


@pytest.mark.parametrize(("model_id", "body", "status", "error_type", "reason"), [
    ("Upper-Case", BASE, 400, "validation_exception", "can contain lowercase alphanumeric"),
    ("x" * 65, BASE, 400, "validation_exception", "cannot contain more than 64 characters"),
    ("-leading", BASE, 400, "validation_exception", "must start and end with alphanumeric"),
    ("m1", {**BASE, "inference_config": {"ner": {}}}, 400, "validation_exception", "task [ner] is not supported"),
    ("m1", {**BASE, "inference_config": {"text_embedding": {"tokenization": {"gpt2": {}}}}}, 400,
     "validation_exception", "unsupported tokenization [gpt2]"),
    ("m1", {**BASE, "inference_config": {"text_embedding": {"tokenization": {"bert": {"truncate": "middle"}}}}}, 400,
     "validation_exception", "[truncate] must be one of"),
    ("m1", {k: v for k, v in BASE.items() if k != "inference_config"}, 400, "validation_exception",
     "[inference_config] must not be null"),
    ("m1", {**BASE, "model_type": "tree_ensemble"}, 400, "validation_exception", "[tree_ensemble] is not supported"),
    ("m1", {**BASE, "input": {"field_names": []}}, 400, "validation_exception", "[input.field_names]"),
    ("m1", {**BASE, "create_time": 1}, 400, "validation_exception", "illegal to set [create_time]"),
    ("m1", {**BASE, "colour": "red"}, 400, "status_exception", "unknown field [colour]"),
])
def test_config_refused(client, model_id, body, status, error_type, reason):
    resp = client.put(f"/_ml/trained_models/{model_id}", json=body)
    assert resp.status_code == status, resp.text
    err = es_error(resp)
    assert err["type"] == error_type and reason in err["reason"], err
    assert client.get(f"/_ml/trained_models/{model_id}").status_code == 404  # nothing was created


def test_parts_and_vocabulary_are_checked(client, tiny_elastic):
    data, config, vocab = tiny_elastic
    assert client.put("/_ml/trained_models/parts-check", json=config).status_code == 200
    resp = client.put("/_ml/trained_models/parts-check", json=config)
    assert resp.status_code == 400 and es_error(resp)["type"] == "resource_already_exists_exception"

    def part(i: int, payload: bytes, total: int, parts: int) -> httpx.Response:
        return client.put(f"/_ml/trained_models/parts-check/definition/{i}", json={
            "definition": base64.b64encode(payload).decode(), "total_definition_length": total, "total_parts": parts})

    resp = part(2, b"abc", 10, 2)
    assert resp.status_code == 400 and "[part] must be less than total_parts" in es_error(resp)["reason"]
    resp = part(0, b"abc", 0, 2)
    assert resp.status_code == 400 and "[total_definition_length] must be greater than 0" in es_error(resp)["reason"]
    resp = client.put("/_ml/trained_models/parts-check/definition/0",
                      json={"definition": "not base64!", "total_definition_length": 10, "total_parts": 2})
    assert resp.status_code == 400 and "base64" in es_error(resp)["reason"]
    resp = client.put("/_ml/trained_models/no-such-model/definition/0",
                      json={"definition": "YWJj", "total_definition_length": 3, "total_parts": 1})
    assert resp.status_code == 404 and es_error(resp)["type"] == "resource_not_found_exception"
    assert part(0, b"abc", 10, 2).status_code == 200
    resp = part(1, b"abc", 12, 2)  # other totals than the first part's
    assert resp.status_code == 409 and "differ from the earlier parts" in es_error(resp)["reason"]
    # A vocabulary without BERT's special tokens is refused; a good one with parts that add up to another
    # length than announced leaves the model not fully defined.
    resp = client.put("/_ml/trained_models/parts-check/vocabulary", json={"vocabulary": ["a", "b"]})
    assert resp.status_code == 400 and "[CLS]" in es_error(resp)["reason"]
    assert client.put("/_ml/trained_models/parts-check/vocabulary", json=vocab).status_code == 200
    resp = part(1, b"abcd", 10, 2)
    assert resp.status_code == 400 and "[total_definition_length] is [10]" in es_error(resp)["reason"]
    assert config_of(client, "parts-check")["fully_defined"] is False
    assert client.delete("/_ml/trained_models/parts-check").status_code == 200
    assert client.get("/_ml/trained_models/parts-check").status_code == 404


def test_an_unfinished_upload_survives_a_restart(tmp_path, tiny_elastic):
    data, config, vocab = tiny_elastic
    with ServerThread(tmp_path) as srv, srv.client() as c:
        upload(c, "restart-me", tiny_elastic, vocab=False)
    with ServerThread(tmp_path) as srv, srv.client() as c:
        assert config_of(c, "restart-me")["fully_defined"] is False
        assert c.put("/_ml/trained_models/restart-me/vocabulary", json=vocab).status_code == 200
        assert config_of(c, "restart-me")["fully_defined"] is True


def test_truncate_none_refuses_long_inputs(client, tiny_elastic):
    data, config, vocab = tiny_elastic
    strict = {**config, "inference_config": {"text_embedding": {
        **config["inference_config"]["text_embedding"],
        "tokenization": {"bert": {"do_lower_case": True, "max_sequence_length": 16, "truncate": "none"}}}}}
    upload(client, "tiny-strict", (data, strict, vocab))
    assert client.post("/_ml/trained_models/tiny-strict/deployment/_start").status_code == 200
    ok = client.post("/_ml/trained_models/tiny-strict/_infer", json={"docs": [{"text_field": "short"}]})
    assert ok.status_code == 200, ok.text
    resp = client.post("/_ml/trained_models/tiny-strict/_infer",
                       json={"docs": [{"text_field": "a much longer input than sixteen tokens " * 4}]})
    assert resp.status_code == 400, resp.text
    assert "exceeds the maximum sequence length [16]" in es_error(resp)["reason"]
    assert client.delete("/_ml/trained_models/tiny-strict?force=true").status_code == 200
