"""The model store: import, detection of what a folder serves, atomicity, no pickles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infernetes.worker.modelstore import MANIFEST, ModelStore, ModelStoreError, inspect_folder


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("mlm")
    BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("ce")
    BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, num_labels=1)
                                  ).save_pretrained(path, safe_serialization=True)
    return path


def test_import_sentence_transformer(tmp_path, minilm_dir):
    store = ModelStore(tmp_path)
    info = store.import_folder(minilm_dir, "minilm")
    assert (info.task_type, info.kind) == ("text_embedding", "sentence-transformers")
    assert (info.dimensions, info.max_seq_length, info.similarity) == (384, 256, "cosine")
    assert "model.safetensors" in info.files and len(info.files["model.safetensors"]) == 64
    assert store.get("minilm") == info
    assert [m.model_id for m in store.list()] == ["minilm"]
    assert store.verify("minilm") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left behind


def test_detects_sparse_and_cross_encoders(mlm_dir, classifier_dir):
    assert inspect_folder(mlm_dir)["task_type"] == "sparse_embedding"
    assert inspect_folder(mlm_dir)["dimensions"] == 100
    assert inspect_folder(classifier_dir)["task_type"] == "rerank"
    with pytest.raises(ModelStoreError, match="looks like a \\[rerank\\] model"):
        inspect_folder(classifier_dir, "text_embedding")


def test_prompts_come_from_the_model_config(tmp_path, minilm_dir):
    folder = tmp_path / "e5ish"
    shutil.copytree(minilm_dir, folder)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}}))
    info = ModelStore(tmp_path / "store").import_folder(folder, "e5ish")
    assert info.prompts == {"SEARCH": "query: ", "INGEST": "passage: "}
    assert info.prompt_for("SEARCH") == "query: " and info.prompt_for("CLUSTERING") is None


def test_pickle_weights_are_never_imported(tmp_path, mlm_dir):
    only_pickle = tmp_path / "pickled"
    only_pickle.mkdir()
    shutil.copy(mlm_dir / "config.json", only_pickle)
    (only_pickle / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelStoreError, match="no safetensors weights .*pytorch_model.bin"):
        ModelStore(tmp_path / "store").import_folder(only_pickle, "pickled")
    mixed = tmp_path / "mixed"
    shutil.copytree(mlm_dir, mixed)
    (mixed / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    info = ModelStore(tmp_path / "store").import_folder(mixed, "mixed")
    assert "pytorch_model.bin" not in info.files
    assert not (info.path / "pytorch_model.bin").exists()


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "", ".", "..", "-lead", "trail-", "x" * 65])
def test_bad_model_ids_are_refused(tmp_path, mlm_dir, bad_id):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelStoreError, match="invalid model id"):
        store.import_folder(mlm_dir, bad_id)
    assert store.get(bad_id) is None


def test_existing_ids_need_replace(tmp_path, mlm_dir, classifier_dir):
    store = ModelStore(tmp_path)
    store.import_folder(mlm_dir, "m")
    with pytest.raises(ModelStoreError, match="already exists"):
        store.import_folder(classifier_dir, "m")
    assert store.import_folder(classifier_dir, "m", replace=True).task_type == "rerank"
    assert store.remove("m") and store.get("m") is None and not store.remove("m")


def test_interrupted_imports_leave_nothing(tmp_path, mlm_dir, monkeypatch):
    store = ModelStore(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("infernetes.worker.modelstore.shutil.copyfile", boom)
    with pytest.raises(OSError):
        store.import_folder(mlm_dir, "half")
    assert store.get("half") is None
    assert list(tmp_path.iterdir()) == []


def test_corruption_is_detected(tmp_path, mlm_dir):
    store = ModelStore(tmp_path)
    info = store.import_folder(mlm_dir, "m")
    with open(info.path / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    assert store.verify("m") == ["model.safetensors"]
    assert json.loads((info.path / MANIFEST).read_text())["model_id"] == "m"
