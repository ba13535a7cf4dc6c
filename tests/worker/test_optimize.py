"""`infernetes models optimize`: ONNX Runtime variants of text-embedding models, checked against the original."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from helpers import put_endpoint, wait_for

from infernetes.worker.engine import InferRequest, Job, engine_for
from infernetes.worker.modelstore import ModelStore
from infernetes.worker.optimize import (
    MIN_COSINE,
    MIN_TOP_K_OVERLAP,
    ONNX_FILE,
    OptimizeError,
    optimize,
    pooling_of,
    rerank_agreement,
    sparse_agreement,
)


def write_modules(folder, modules, pooling=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))


def test_pooling_of_reads_the_sentence_transformers_modules(tmp_path):
    write_modules(tmp_path / "cls", [{"type": "sentence_transformers.models.Transformer", "path": ""},
                                     {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
                                     {"type": "sentence_transformers.models.Normalize", "path": "2_Normalize"}],
                  {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    assert pooling_of(tmp_path / "cls") == {"pooling": "cls", "normalize": True}

    write_modules(tmp_path / "max", [{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}],
                  {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False})
    with pytest.raises(OptimizeError, match="not supported"):
        pooling_of(tmp_path / "max")

    write_modules(tmp_path / "dense", [{"type": "sentence_transformers.models.Dense", "path": "2_Dense"}])
    with pytest.raises(OptimizeError, match="Dense"):
        pooling_of(tmp_path / "dense")


def test_sparse_check_counts_top_tokens_and_weights():
    want = np.zeros((2, 50), dtype=np.float32)
    want[0, :10] = np.linspace(2.0, 1.0, 10)
    want[1, 20:25] = 1.0
    assert sparse_agreement(want, want.copy(), k=10)[1]["passed"]
    # The same tokens with weights a little off: within 5% of the row's largest weight.
    assert sparse_agreement(want, want * 1.02, k=10)[1]["passed"]
    off = want.copy()
    off[0, 0] *= 1.2  # one weight 20% off
    assert not sparse_agreement(want, off, k=10)[1]["passed"]
    swapped = want.copy()
    swapped[0, :2], swapped[0, 40:42] = 0.0, 5.0  # two of ten top tokens replaced
    figure, check = sparse_agreement(want, swapped, k=10)
    assert not check["passed"] and figure == pytest.approx(0.8) and "overlap 0.800" in check["why"]


def test_rerank_check_needs_close_scores_and_the_same_best_document():
    want = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3], dtype=np.float32)
    assert rerank_agreement(want, want + 0.01, group=3)[1]["passed"]
    assert not rerank_agreement(want, want + 0.05, group=3)[1]["passed"]
    flipped = want.copy()
    flipped[3:] = [0.2, 0.3, 0.31]  # the second query's best document changes
    assert not rerank_agreement(want, flipped, group=3)[1]["same_best"]
    close = np.array([0.9, 0.1, 0.5, 0.2, 0.30, 0.29], dtype=np.float32)
    swapped = np.array([0.9, 0.1, 0.5, 0.2, 0.29, 0.30], dtype=np.float32)  # within 0.02, best swapped
    check = rerank_agreement(close, swapped, group=3)[1]
    assert check["max_score_difference"] <= 0.02 and not check["same_best"] and not check["passed"]


@pytest.mark.slow
def test_unsupported_models_are_refused(tmp_path, tiny_model_dir):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(OptimizeError, match="not in the store"):
        optimize(store, "nothing", "nothing-onnx")
    info = store.import_folder(tiny_model_dir, "tiny")
    modules = json.loads((info.path / "modules.json").read_text())
    (info.path / "modules.json").write_text(json.dumps(modules + [{"idx": 9, "name": "9", "path": "9_Dense",
                                                                    "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(OptimizeError, match="Dense"):
        optimize(store, "tiny", "tiny-onnx")
    assert store.get("tiny-onnx") is None


@pytest.mark.slow
def test_sparse_and_rerank_variants_answer_as_the_originals(tmp_path, splade_dir, reranker_dir):
    store = ModelStore(tmp_path / "models")
    store.import_folder(splade_dir, "splade")
    store.import_folder(reranker_dir, "reranker")
    sparse, overlap = optimize(store, "splade", "splade-onnx")
    assert sparse.backend == "onnx" and sparse.task_type == "sparse_embedding" and overlap >= MIN_TOP_K_OVERLAP
    assert sparse.options["pooling"] == "splade" and sparse.options["check"]["passed"]
    rerank, figure = optimize(store, "reranker", "reranker-onnx")
    assert rerank.backend == "onnx" and rerank.options["activation"] == "sigmoid" and figure > 0.98

    texts = ["what causes the northern lights", "Mix flour, water and yeast, then bake the dough."]
    for original, variant in (("splade", "splade-onnx"), ("reranker", "reranker-onnx")):
        answers = []
        for model_id in (original, variant):
            engine = engine_for(store.get(model_id), 1)
            engine.load()
            request = InferRequest(inputs=texts, query="how do I bake bread")
            job = Job(request=request, rows=engine.rows(request), loop=None, future=None)  # type: ignore[arg-type]
            for seg in engine.prepare(job, engine.max_batch_tokens or 1 << 20, 1 << 20):
                engine.store(seg, engine.forward(seg.features))
            answers.append(orjson.loads(engine.render(job)))
        torch_answer, onnx_answer = answers
        if original == "splade":
            assert type(engine).__name__ == "OnnxSparseEmbeddingEngine"
            for a, b in zip(torch_answer["sparse_embedding"], onnx_answer["sparse_embedding"]):
                assert list(a["embedding"])[:10] == list(b["embedding"])[:10]
                for token in list(a["embedding"])[:10]:
                    assert b["embedding"][token] == pytest.approx(a["embedding"][token], abs=1e-3)
        else:
            assert type(engine).__name__ == "OnnxRerankEngine"
            assert [r["index"] for r in torch_answer["rerank"]] == [r["index"] for r in onnx_answer["rerank"]] == [1, 0]
            for a, b in zip(torch_answer["rerank"], onnx_answer["rerank"]):
                assert b["relevance_score"] == pytest.approx(a["relevance_score"], abs=1e-4)


@pytest.mark.slow
def test_linux_x86_64_ids_serve_an_onnx_variant_made_on_first_use(server, monkeypatch):
    """``<id>_linux-x86_64`` (Elastic's name for its x86 builds): the ONNX variant of <id>, kept only when it
    passes its check; otherwise the base model serves."""
    from infernetes.worker import optimize as optimize_module

    store = ModelStore(server.data_dir / "models")
    runtime = server.app.state.service.runtime
    with server.client() as client:
        for inference_id, model_id in (("x86-base", "tiny"), ("x86-opt", "tiny_linux-x86_64")):
            resp = put_endpoint(client, "text_embedding", inference_id, model_id)
            assert resp.status_code == 200, resp.text
        try:
            variant = wait_for(lambda: store.get("tiny_linux-x86_64"), timeout=300, what="the variant")
            assert variant.backend == "onnx" and variant.options["source"] == "tiny"
            assert variant.options["check"]["passed"]
            wait_for(lambda: runtime.deployments["x86-opt"].model is not None, timeout=300)
            assert runtime.deployments["x86-opt"].model.path == variant.path
            vectors = {}
            for inference_id in ("x86-base", "x86-opt"):
                resp = client.post(f"/_inference/text_embedding/{inference_id}", json={"input": ["bread", "sky"]})
                assert resp.status_code == 200, resp.text
                vectors[inference_id] = np.array([e["embedding"] for e in resp.json()["text_embedding"]])
            a, b = vectors["x86-base"], vectors["x86-opt"]
            assert np.min(np.sum(a * b, axis=1)) >= MIN_COSINE  # both normalised
        finally:
            for inference_id in ("x86-base", "x86-opt"):
                client.delete(f"/_inference/text_embedding/{inference_id}")

        # A variant that fails its check is not kept: the base model serves. The tiny model again (its variant
        # removed first): any model fails a check that asks for more than identity, and it exports in a moment.
        assert store.remove("tiny_linux-x86_64")
        monkeypatch.setattr(optimize_module, "MIN_COSINE", 1.01)
        resp = put_endpoint(client, "text_embedding", "x86-fail", "tiny_linux-x86_64")
        try:
            assert resp.status_code == 200, resp.text
            wait_for(lambda: "tiny_linux-x86_64" in runtime.variant_failures, timeout=300, what="the check")
            assert "drifts" in runtime.variant_failures["tiny_linux-x86_64"]
            assert store.get("tiny_linux-x86_64") is None
            wait_for(lambda: runtime.deployments["x86-fail"].model is not None, timeout=300)
            assert runtime.deployments["x86-fail"].model.model_id == "tiny"
            resp = client.post("/_inference/text_embedding/x86-fail", json={"input": "bread"})
            assert resp.status_code == 200, resp.text
        finally:
            client.delete("/_inference/text_embedding/x86-fail")


@pytest.mark.slow
def test_int8_variant_serves_embeddings_close_to_the_original(server):
    store = ModelStore(server.data_dir / "models")
    info, cosine = optimize(store, "minilm", "minilm-int8", quantize="int8")
    original = store.get("minilm")
    assert cosine >= MIN_COSINE
    assert info.backend == "onnx" and info.options["quantize"] == "int8" and info.options["source"] == "minilm"
    assert info.options["pooling"] == "mean" and info.options["min_cosine"] == pytest.approx(cosine, abs=1e-4)
    assert (info.path / ONNX_FILE).exists() and not (info.path / "model.safetensors").exists()
    assert info.size_bytes < original.size_bytes / 2  # int8 weights
    assert (info.dimensions, info.max_seq_length) == (original.dimensions, original.max_seq_length)
    with pytest.raises(OptimizeError, match="already exists"):
        optimize(store, "minilm", "minilm-int8", quantize="int8")

    texts = ["How do I bake bread at home?", "The aurora glows green over the polar sky.",
             "a much longer input " * 200]  # past max_seq_length: truncated the same way
    with server.client() as client:
        for inference_id, model_id in (("opt-torch", "minilm"), ("opt-int8", "minilm-int8")):
            resp = put_endpoint(client, "text_embedding", inference_id, model_id)
            assert resp.status_code == 200, resp.text
        try:
            vectors = {}
            for inference_id in ("opt-torch", "opt-int8"):
                resp = client.post(f"/_inference/text_embedding/{inference_id}", json={"input": texts})
                assert resp.status_code == 200, resp.text
                vectors[inference_id] = np.array([e["embedding"] for e in resp.json()["text_embedding"]])
            a, b = vectors["opt-torch"], vectors["opt-int8"]
            assert a.shape == b.shape == (3, 384)
            cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            assert cosines.min() >= MIN_COSINE
            # Not the same model by accident: int8 weights move the vectors a little.
            assert not np.allclose(a, b, atol=1e-5)
            # The nearest neighbour is the same in both.
            assert np.argmax(a[:2] @ a[0]) == np.argmax(b[:2] @ b[0]) == 0
        finally:
            for inference_id in ("opt-torch", "opt-int8"):
                client.delete(f"/_inference/text_embedding/{inference_id}")
