"""Downloading built-in models from a hub-shaped server: resume, checksums, progress, clear failures."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.utils._http
import pytest
from hubserver import FakeHub

from infernetes.worker.download import DownloadError, Progress, builtin, canonical_id, pull
from infernetes.worker.modelstore import ModelStore

REPO = "intfloat/multilingual-e5-small"


@pytest.fixture
def hub(minilm_dir):
    with FakeHub() as h:
        h.add_folder(REPO, minilm_dir)
        yield h


def test_builtin_ids_and_variants():
    assert canonical_id(".elser_model_2_linux-x86_64") == ".elser_model_2"
    assert builtin(".multilingual-e5-small_linux-x86_64").repo_id == REPO
    assert builtin(".rerank-v1").task_type == "rerank"
    assert builtin("my-model") is None


def test_pull_downloads_verifies_and_reports_progress(tmp_path, hub):
    seen = []
    progress = Progress(".multilingual-e5-small", on_change=lambda p: seen.append(p.downloaded_bytes))
    info = pull(ModelStore(tmp_path), ".multilingual-e5-small_linux-x86_64", endpoint=hub.url, progress=progress)
    assert info.model_id == ".multilingual-e5-small" and info.task_type == "text_embedding"
    assert info.prompts["SEARCH"] == "query: " and info.prompts["INGEST"] == "passage: "
    assert info.source == f"{hub.url}/{REPO}@main"
    done = progress.as_dict()
    assert done["state"] == "done" and done["percent"] == 100.0 and done["files_done"] == done["files_total"]
    assert seen == sorted(seen) and len(seen) > 10  # progress moved forward, in many steps
    assert ".gitattributes" not in info.files  # only what serving needs
    assert [p.name for p in tmp_path.iterdir()] == [".multilingual-e5-small"]  # staging cleaned up


def test_interrupted_download_resumes(tmp_path, hub):
    hub.cut_after["model.safetensors"] = 20_000_000
    info = pull(ModelStore(tmp_path), ".multilingual-e5-small", endpoint=hub.url)
    assert info.files["model.safetensors"]
    ranges = [r for method, path, r in hub.requests if path.endswith("model.safetensors") and method == "GET"]
    # The second request picked up from what had reached the disk, not from zero.
    assert ranges[0] is None and ranges[-1].startswith("bytes=") and 0 < int(ranges[-1][6:-1]) <= 20_000_000


def test_corrupt_file_is_rejected_then_retried(tmp_path, hub):
    hub.corrupt.add("model.safetensors")
    store = ModelStore(tmp_path)
    with pytest.raises(DownloadError, match="checksum mismatch for \\[model.safetensors\\]"):
        pull(store, ".multilingual-e5-small", endpoint=hub.url)
    assert store.get(".multilingual-e5-small") is None
    staged = tmp_path / ".download-.multilingual-e5-small"
    assert not (staged / "model.safetensors").exists()  # the bad file was discarded
    def fetched() -> set[str]:
        return {p.split("/resolve/main/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}

    verified_before = fetched() - {"model.safetensors"}
    assert verified_before  # some files were complete before the corrupt one
    hub.corrupt.clear()
    hub.requests.clear()
    info = pull(store, ".multilingual-e5-small", endpoint=hub.url)
    assert store.verify(info.model_id) == []
    assert "model.safetensors" in fetched()
    assert not fetched() & verified_before  # files verified earlier were not downloaded again


def test_no_hub_fails_fast_with_how_to_import(tmp_path, monkeypatch):
    # huggingface_hub retries a refused connection five times, 1-8 s apart (about 25 s): the pull must not.
    waits: list[float] = []
    monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", waits.append)
    with pytest.raises(DownloadError) as info:
        pull(ModelStore(tmp_path), ".elser_model_2", endpoint="http://127.0.0.1:9")
    assert waits == [], "the pull waited for retries of a hub that refuses connections"
    reason = str(info.value)
    assert "Could not download model [.elser_model_2]" in reason and "ConnectError" in reason
    assert "infernetes models import <folder>" in reason and "--model-id .elser_model_2" in reason


def test_pickle_only_repositories_are_refused(tmp_path, hub, minilm_dir):
    folder = tmp_path / "pickled"
    shutil.copytree(minilm_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    hub.add_folder("someone/pickled", folder)
    with pytest.raises(DownloadError, match="no safetensors weights"):
        pull(ModelStore(tmp_path / "store"), "pickled", repo_id="someone/pickled", task_type="text_embedding",
             endpoint=hub.url)
    assert not any("pytorch_model.bin" in p for _, p, _ in hub.requests)


def test_cli_pull_shows_progress(tmp_path, hub):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("infernetes")
    proc = subprocess.run([str(exe), "models", "pull", ".multilingual-e5-small", "--hub", hub.url,
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pulled [.multilingual-e5-small]" in proc.stdout
    assert "pulling .multilingual-e5-small" in proc.stderr and "100%" in proc.stderr  # the tqdm bar
    listed = subprocess.run([str(exe), "models", "list", "--data-dir", str(tmp_path)], capture_output=True,
                            text=True).stdout
    assert ".multilingual-e5-small" in listed and "text_embedding" in listed
    manifest = json.loads((tmp_path / "models" / ".multilingual-e5-small" / "infernetes-model.json").read_text())
    assert manifest["prompts"]["SEARCH"] == "query: "


def _lock_waiters(path) -> int:
    """Processes or threads blocked on an flock of this file (Linux /proc/locks marks waiters with '->')."""
    import os

    inode = os.stat(path).st_ino
    return sum(1 for line in open("/proc/locks") if "->" in line and "FLOCK" in line
               and line.split()[-3].endswith(f":{inode}"))


def test_concurrent_pulls_of_one_model_share_one_download(tmp_path, hub):
    """Two pods pulling the same model into a shared cache: the second waits on the lock, then finds the
    model installed; the files are downloaded once and never written by two at the same time."""
    import threading

    from helpers import wait_for

    store = ModelStore(tmp_path)
    results: dict[str, object] = {}
    second = threading.Thread(target=lambda: results.setdefault(
        "second", pull(store, ".multilingual-e5-small", endpoint=hub.url)))
    started: list[bool] = []

    def while_downloading(p: Progress) -> None:
        if p.downloaded_bytes > 0 and not started:
            started.append(True)
            second.start()  # the second pull arrives while the first holds the lock...
            lock = tmp_path / ".download-.multilingual-e5-small.lock"
            wait_for(lambda: _lock_waiters(lock) > 0, 30, 0.01, "the second pull to wait on the lock")

    results["first"] = pull(store, ".multilingual-e5-small", endpoint=hub.url,
                            progress=Progress(".multilingual-e5-small", on_change=while_downloading))
    second.join(60)
    assert results["second"] == results["first"]
    gets = [p for method, p, _ in hub.requests if method == "GET" and p.endswith("model.safetensors")]
    assert len(gets) == 1, "the second pull downloaded the model again"
    assert [p.name for p in tmp_path.iterdir()] == [".multilingual-e5-small"]  # no staging, no lock file left
