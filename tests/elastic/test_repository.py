"""Elastic's model repository layout, served from ``file://`` and ``http://``, with files Eland made.

``{name}.metadata.json`` (config, size, sha256), ``{name}.pt`` and ``{name}.vocab.json``: pulled,
checksum-verified (a corrupt file is refused), resumed after a killed download, then served.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import ServerThread, kill_process_group

from infernetes.worker.download import DownloadError
from infernetes.worker.elastic_repository import pull_elastic
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

NAME = "multilingual-e5-small_linux-x86_64"  # Elastic's platform build of .multilingual-e5-small
PREFIXES = {"search": "query: ", "ingest": "passage: "}
INFERNETES = str(Path(sys.executable).with_name("infernetes"))

SAVE = """
import json, sys
from eland.ml.pytorch.transformers import TransformerModel
tm = TransformerModel(model_id=sys.argv[1], task_type="text_embedding", es_version=(9, 1, 0))
path, config, vocab = tm.save(sys.argv[2])
json.dump(config.to_dict(), open(sys.argv[2] + "/config.json", "w"))
"""


@pytest.fixture(scope="module")
def repository(eland_venv: Path, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository folder in Elastic's layout, its model traced by Eland from the tiny sentence model."""
    out = tmp_path_factory.mktemp("eland-out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(eland_venv / "bin" / "python"), "-I", "-c", SAVE, str(tiny_bert_dir), str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    repo = tmp_path_factory.mktemp("elastic-repo")
    data = (out / "traced_pytorch_model.pt").read_bytes()
    (repo / f"{NAME}.pt").write_bytes(data)
    (repo / f"{NAME}.vocab.json").write_bytes((out / "vocabulary.json").read_bytes())
    (repo / f"{NAME}.metadata.json").write_text(json.dumps({
        "packaged_model_id": NAME, "description": "made by Eland for the test", "model_type": "pytorch",
        "inference_config": config["inference_config"], "prefix_strings": PREFIXES,
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "vocabulary_file": f"{NAME}.vocab.json"}))
    return repo


class StaticRepository:
    """The repository folder over HTTP with Range support; ``stall_after`` bytes of the .pt, it stops sending."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stall_after: int | None = None
        self.ranges: list[str | None] = []
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = repo.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                header = self.headers.get("Range")
                if path.suffix == ".pt":
                    repo.ranges.append(header)
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if path.suffix == ".pt" and repo.stall_after is not None:
                    self.wfile.write(body[: max(0, repo.stall_after - start)])
                    self.wfile.flush()
                    time.sleep(600)  # until the client is killed
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StaticRepository:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_repository(repository: Path) -> Iterator[StaticRepository]:
    with StaticRepository(repository) as srv:
        yield srv


def test_file_repository_pull_then_serve(repository, tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    proc = subprocess.run([INFERNETES, "models", "pull", ".multilingual-e5-small_linux-x86_64", "--repository",
                           f"file://{repository}", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = ModelStore(tmp_path / "models").get(".multilingual-e5-small")
    assert info is not None and info.backend == "elastic" and info.task_type == "text_embedding"
    assert info.prompts == {"SEARCH": "query: ", "INGEST": "passage: "}

    with ServerThread(tmp_path) as srv, srv.client(timeout=120) as c:
        resp = c.put("/_inference/text_embedding/e5", json={"service": "elasticsearch", "service_settings": {
            "model_id": ".multilingual-e5-small", "num_allocations": 1, "num_threads": 1}})
        assert resp.status_code == 200, resp.text
        resp = c.post("/_inference/e5", json={"input": ["northern lights"], "input_type": "SEARCH"})
        assert resp.status_code == 200, resp.text
        got = np.array(resp.json()["text_embedding"][0]["embedding"])
    want = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(["query: northern lights"])[0]
    assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.999


def test_http_repository_refuses_a_corrupt_definition(repository, tmp_path):
    corrupt = tmp_path / "corrupt-repo"
    corrupt.mkdir()
    for f in repository.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    data = bytearray((corrupt / f"{NAME}.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    (corrupt / f"{NAME}.pt").write_bytes(bytes(data))
    store = ModelStore(tmp_path / "models")
    with StaticRepository(corrupt) as srv, pytest.raises(DownloadError, match="checksum mismatch"):
        pull_elastic(store, ".multilingual-e5-small", srv.url)
    assert store.get(".multilingual-e5-small") is None
    assert not list((tmp_path / "models").glob(f".download-*/{NAME}.pt*"))  # the bad bytes were discarded


def test_http_download_resumes_after_a_kill(http_repository, repository, tmp_path):
    size = (repository / f"{NAME}.pt").stat().st_size
    half = 1 << 20  # the downloader writes 1 MiB blocks: the .part holds exactly this much when the server stalls
    assert size > 2 * half
    http_repository.stall_after = half
    cmd = [INFERNETES, "models", "pull", ".multilingual-e5-small", "--repository", http_repository.url,
           "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    part = tmp_path / "models" / ".download-.multilingual-e5-small" / f"{NAME}.pt.part"
    try:
        deadline = time.monotonic() + 120
        while not (part.exists() and part.stat().st_size >= half):
            assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "the download never reached half"
            time.sleep(0.05)
    finally:
        kill_process_group(proc.pid)
        proc.wait(timeout=30)
    assert part.stat().st_size == half
    http_repository.stall_after = None
    proc2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert http_repository.ranges[-1] == f"bytes={half}-"  # resumed, not started over
    info = ModelStore(tmp_path / "models").get(".multilingual-e5-small")
    assert info is not None and info.files["model.torchscript"] == hashlib.sha256(
        (repository / f"{NAME}.pt").read_bytes()).hexdigest()


def test_put_of_a_packaged_model_pulls_it_from_the_repository(repository, tmp_path, monkeypatch):
    """Kibana's ``PUT _ml/trained_models/.multilingual-e5-small`` downloads Elastic's files."""
    monkeypatch.setenv("INFERNETES_MODEL_REPOSITORY", f"file://{repository}")
    with ServerThread(tmp_path) as srv, srv.client(timeout=120) as c:
        resp = c.put("/_ml/trained_models/.multilingual-e5-small", json={"model_type": "pytorch"})
        assert resp.status_code == 400 and "packaged model" in resp.text
        resp = c.put("/_ml/trained_models/.multilingual-e5-small?wait_for_completion=true",
                     json={"input": {"field_names": ["text_field"]}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["fully_defined"] is True
        config = c.get("/_ml/trained_models/.multilingual-e5-small").json()["trained_model_configs"][0]
        assert config["fully_defined"] is True and "text_embedding" in config["inference_config"]
    info = ModelStore(tmp_path / "models").get(".multilingual-e5-small")
    assert info is not None and info.backend == "elastic"
