"""`infernetes models optimize`: ONNX Runtime variants of text-embedding models, checked against the original."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import put_endpoint

from infernetes.worker.modelstore import ModelStore
from infernetes.worker.optimize import MIN_COSINE, ONNX_FILE, OptimizeError, optimize, pooling_of


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


@pytest.mark.slow
def test_only_text_embedding_models_are_optimized(tmp_path, splade_dir):
    store = ModelStore(tmp_path / "models")
    store.import_folder(splade_dir, "splade")
    with pytest.raises(OptimizeError, match="sparse_embedding"):
        optimize(store, "splade", "splade-onnx")
    with pytest.raises(OptimizeError, match="not in the store"):
        optimize(store, "nothing", "nothing-onnx")
    assert store.get("splade-onnx") is None


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
