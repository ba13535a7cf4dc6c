"""The real Eland CLI against a live server: upload, ``--start``, then the Elasticsearch page's endpoint body.

Each model is uploaded by ``eland_import_hub_model`` from a local folder, exactly as users upload to
Elasticsearch, and the endpoint's answers are compared with the Hugging Face model run in-process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerThread, es_error, run_process_group

pytestmark = pytest.mark.slow

TEXTS = ["How do I bake bread at home?", "Knead the dough, let it rise, then bake it for 40 minutes.",
         "The stock market fell sharply today.", "what causes the northern lights"]
IMPORT_TIMEOUT = 300


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("eland-serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live: ServerThread) -> Iterator[httpx.Client]:
    with live.client(timeout=120) as c:
        yield c


def eland_import(venv: Path, url: str, folder: Path, task: str, model_id: str) -> subprocess.CompletedProcess[str]:
    """``eland_import_hub_model ... --start``, killed with everything it started if it overruns."""
    cmd = [str(venv / "bin" / "eland_import_hub_model"), "--url", url, "--hub-model-id", str(folder),
           "--task-type", task, "--es-model-id", model_id, "--start"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = run_process_group(cmd, IMPORT_TIMEOUT, env=env, cwd="/")
    assert proc.returncode == 0, f"eland_import_hub_model failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def page_body(model_id: str) -> dict:
    """The Elasticsearch page's body for a model "uploaded by Eland"."""
    return {"service": "elasticsearch",
            "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": model_id}}


def test_text_embedding_upload_matches_hugging_face(timed, eland_venv, live, client, minilm_dir):
    from sentence_transformers import SentenceTransformer

    model_id = "msmarco-minilm-l6-cos-v5"
    with timed("eland upload of MiniLM (text_embedding, --start)"):
        eland_import(eland_venv, live.url, minilm_dir, "text_embedding", model_id)
    config = client.get(f"/_ml/trained_models/{model_id}").json()["trained_model_configs"][0]
    assert config["fully_defined"] is True
    assert config["inference_config"]["text_embedding"]["tokenization"]["bert"]["do_lower_case"] is True
    assert config["input"] == {"field_names": ["text_field"]}
    stats = client.get(f"/_ml/trained_models/{model_id}/_stats").json()["trained_model_stats"][0]
    assert stats["deployment_stats"]["state"] == "started"

    resp = client.put("/_inference/text_embedding/my-msmarco-minilm-model", json=page_body(model_id))
    assert resp.status_code == 200, resp.text
    assert resp.json()["service_settings"]["model_id"] == model_id
    resp = client.post("/_inference/text_embedding/my-msmarco-minilm-model", json={"input": TEXTS})
    assert resp.status_code == 200, resp.text
    got = np.array([r["embedding"] for r in resp.json()["text_embedding"]])
    want = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999, cosine

    # Elastic's own inference API on the same deployment gives the same vectors.
    resp = client.post(f"/_ml/trained_models/{model_id}/_infer", json={"docs": [{"text_field": t} for t in TEXTS]})
    assert resp.status_code == 200, resp.text
    infer = np.array([r["predicted_value"] for r in resp.json()["inference_results"]])
    np.testing.assert_allclose(infer, got, atol=1e-5)
    err = es_error(client.post(f"/_ml/trained_models/{model_id}/deployment/_infer",
                               json={"docs": [{"other_field": "x"}]}))
    assert "text_field" in err["reason"]

    # Deployed and used: deleting the model is refused until forced.
    resp = client.delete(f"/_ml/trained_models/{model_id}")
    assert resp.status_code == 409 and "currently deployed" in es_error(resp)["reason"]


def test_text_expansion_upload_matches_splade(timed, eland_venv, live, client, splade_bert_dir):
    from sentence_transformers import SparseEncoder

    model_id = "splade-tiny"
    with timed("eland upload of SPLADE (text_expansion, --start)"):
        eland_import(eland_venv, live.url, splade_bert_dir, "text_expansion", model_id)
    resp = client.put("/_inference/sparse_embedding/my-splade", json=page_body(model_id))
    assert resp.status_code == 200, resp.text
    resp = client.post("/_inference/sparse_embedding/my-splade", json={"input": TEXTS})
    assert resp.status_code == 200, resp.text
    results = resp.json()["sparse_embedding"]

    encoder = SparseEncoder(str(splade_bert_dir), device="cpu")
    dense = encoder.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    vocab = [t for t, _ in sorted(encoder.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    for row, result in zip(dense, results):
        want = {vocab[i].replace(".", "__"): float(row[i]) for i in np.flatnonzero(row)}
        got = result["embedding"]
        assert set(got) == set(want)
        assert max(abs(got[t] - want[t]) for t in want) <= 1e-3
    assert dense[3][vocab.index("northern")] > 0  # the comparison is not vacuous

    resp = client.post(f"/_ml/trained_models/{model_id}/_infer", json={"docs": [{"text_field": TEXTS[3]}]})
    assert resp.status_code == 200, resp.text
    alone = resp.json()["inference_results"][0]["predicted_value"]  # unpadded, so equal only to float precision
    assert set(alone) == set(results[3]["embedding"])
    assert max(abs(alone[t] - w) for t, w in results[3]["embedding"].items()) <= 1e-4


def test_text_similarity_upload_matches_cross_encoder(timed, eland_venv, live, client, reranker_bert_dir):
    import torch
    from sentence_transformers import CrossEncoder

    model_id = "tiny-reranker"
    with timed("eland upload of the reranker (text_similarity, --start)"):
        eland_import(eland_venv, live.url, reranker_bert_dir, "text_similarity", model_id)
    config = client.get(f"/_ml/trained_models/{model_id}").json()["trained_model_configs"][0]
    assert config["inference_config"]["text_similarity"]["tokenization"]["bert"]["truncate"] == "second"
    resp = client.put("/_inference/rerank/my-reranker", json=page_body(model_id))
    assert resp.status_code == 200, resp.text
    query = TEXTS[0]
    docs = TEXTS[1:]
    resp = client.post("/_inference/rerank/my-reranker", json={"query": query, "input": docs})
    assert resp.status_code == 200, resp.text
    got = {r["index"]: r["relevance_score"] for r in resp.json()["rerank"]}
    # Elasticsearch answers the model's logit itself (no sigmoid).
    want = CrossEncoder(str(reranker_bert_dir), device="cpu").predict(
        [(query, d) for d in docs], activation_fn=torch.nn.Identity())
    assert max(abs(got[i] - float(want[i])) for i in range(len(docs))) <= 1e-3
    assert max(got, key=got.get) == 0  # the bread recipe ranks first: a trained model, not noise

    resp = client.post(f"/_ml/trained_models/{model_id}/_infer",
                       json={"docs": [{"text_field": docs[0]}], "inference_config": {"text_similarity": {"text": query}}})
    assert resp.status_code == 200, resp.text
    assert abs(resp.json()["inference_results"][0]["predicted_value"] - float(want[0])) <= 1e-3
