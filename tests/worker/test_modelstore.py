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

    monkeypatch.setattr("infernetes.worker.modelstore.shutil.copyfileobj", boom)
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


# -- hostile folders (issue 13, D10) ------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_link_out_of_the_folder_is_refused(tmp_path, mlm_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    folder = _copy(mlm_dir, tmp_path / "leaky")
    (folder / "leak.txt").symlink_to(secret)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelStoreError, match=r"\[leak.txt\], a symbolic link to .* outside the folder"):
        store.import_folder(folder, "leaky")
    assert store.get("leaky") is None
    # A linked folder is not walked into either.
    (folder / "leak.txt").unlink()
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ModelStoreError, match=r"\[sub\]"):
        store.import_folder(folder, "leaky")
    assert not any(p.name == "secret.txt" for p in (tmp_path / "store").rglob("*"))


def test_links_inside_the_folder_or_a_hub_cache_snapshot_are_copied_as_files(tmp_path, mlm_dir):
    # The Hugging Face cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>.
    repo = tmp_path / "models--org--mlm"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in mlm_dir.iterdir():
        shutil.copy(f, repo / "blobs" / f"blob-{f.name}")
        (snapshot / f.name).symlink_to(Path("../../blobs") / f"blob-{f.name}")
    (snapshot / "alias.json").symlink_to("config.json")
    info = ModelStore(tmp_path / "store").import_folder(snapshot, "cached")
    stored = info.path / "model.safetensors"
    assert not stored.is_symlink() and stored.read_bytes() == (mlm_dir / "model.safetensors").read_bytes()
    assert not (info.path / "alias.json").is_symlink()


def test_stored_files_are_private(tmp_path, mlm_dir):
    folder = _copy(mlm_dir, tmp_path / "open")
    for f in folder.iterdir():
        f.chmod(0o644)
    (folder / "sub").mkdir(mode=0o755)
    (folder / "sub" / "extra.json").write_text("{}")
    info = ModelStore(tmp_path / "store").import_folder(folder, "m")
    modes = {p.relative_to(info.path).as_posix(): p.stat().st_mode & 0o777 for p in info.path.rglob("*")}
    assert info.path.stat().st_mode & 0o777 == 0o700
    assert modes["sub"] == 0o700
    assert {k: v for k, v in modes.items() if k != "sub"} == dict.fromkeys(set(modes) - {"sub"}, 0o600)
    assert "model.safetensors" in modes and "sub/extra.json" in modes and MANIFEST in modes


def _header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is a text file, not weights\n" * 4, "its first 8 bytes give a header of"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]", "header is not a JSON object"),
        (b"\x03\x00\x00\x00\x00\x00\x00\x00{x}", "header is not JSON"),
        (_header(b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}') + b"8 bytes!",
         "tensor \\[w\\] is described wrongly or lies outside the file"),
        (b"abc", "only 3 bytes long"),
    ],
)
def test_a_file_that_is_not_safetensors_is_refused(tmp_path, mlm_dir, content, reason):
    folder = _copy(mlm_dir, tmp_path / "fake")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelStoreError, match=reason):
        ModelStore(tmp_path / "store").import_folder(folder, "fake")
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("config.json", "[1,2]", r"config.json must hold a JSON object, not list \[\[1, 2\]\]"),
        ("config.json", '"text"', "config.json must hold a JSON object, not str"),
        ("modules.json", '{"a": 1}', "modules.json must hold a JSON array, not dict"),
        ("tokenizer_config.json", "7", "tokenizer_config.json must hold a JSON object, not int"),
        ("config.json", None, "config value of an unexpected type"),
    ],
)
def test_config_files_of_the_wrong_shape_give_a_clear_error(tmp_path, mlm_dir, name, content, reason):
    folder = _copy(mlm_dir, tmp_path / "odd")
    if content is None:  # valid JSON object, nonsense inside
        config = json.loads((folder / name).read_text())
        config["architectures"] = 5
        content = json.dumps(config)
    (folder / name).write_text(content)
    with pytest.raises(ModelStoreError, match=reason):
        ModelStore(tmp_path / "store").import_folder(folder, "odd")


def test_cli_import_reports_a_bad_config_without_a_traceback(tmp_path, mlm_dir, monkeypatch, capsys):
    from infernetes.operator.cli import main

    folder = _copy(mlm_dir, tmp_path / "odd")
    (folder / "config.json").write_text("[1,2]")
    monkeypatch.setenv("INFERNETES_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "import", str(folder), "--model-id", "odd"])
    assert exit_info.value.code == 1
    assert "config.json must hold a JSON object" in capsys.readouterr().err
