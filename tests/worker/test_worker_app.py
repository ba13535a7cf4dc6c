"""The worker's HTTP app under hostile callers (issue 13): only the gateway's credential opens it, bodies are
capped, and a request given up on (deadline passed, client gone) is dropped wherever it is, with its chunking
and tokenising off the event loop and bounded by what the model reads."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from infernetes.worker.app import create_app
from infernetes.worker.config import WorkerSettings
from infernetes.worker.engine import Cancelled, InferRequest, Job, TextEmbeddingEngine, TooManyRows
from infernetes.worker.modelstore import ModelStore

TOKEN = "per-run-credential"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_model_dir) -> TextEmbeddingEngine:
    """The tiny model, loaded once; every app in this module serves it (as a zygote's forked workers do)."""
    info = ModelStore(tmp_path_factory.mktemp("store")).import_folder(tiny_model_dir, "tiny")
    eng = TextEmbeddingEngine(info, num_threads=1)
    eng.load()
    return eng


class Gate:
    """Wraps the engine's forward: records the rows the model ran and holds the model thread until opened."""

    def __init__(self, engine: TextEmbeddingEngine) -> None:
        self.engine = engine
        self.original = engine.forward
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.rows: list[int] = []

    def forward(self, features: dict[str, Any]) -> Any:
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"
        self.rows.append(int(features["input_ids"].shape[0]))
        return self.original(features)

    def __enter__(self) -> Gate:
        self.engine.forward = self.forward  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.opened.set()
        del self.engine.forward


@contextlib.contextmanager
def serve(engine: TextEmbeddingEngine, **overrides: Any) -> Iterator[tuple[str, Any]]:
    """The real worker app under uvicorn on a free port, in a thread named 'worker-loop'; stopped on exit."""
    settings = WorkerSettings(model_dir=engine.info.path, **{"auth_token": TOKEN, **overrides})
    app = create_app(settings, engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="worker-loop", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the worker app did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        while httpx.get(url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the worker never became ready"
            time.sleep(0.02)
        yield url, app.state.worker
    finally:
        server.should_exit = True
        thread.join(30)


# -- D12: the gateway's credential, and a cap on bodies -----------------------------------------


def test_only_the_gateway_credential_opens_the_worker(engine):
    with serve(engine) as (url, _state):
        body = {"input": ["hello"]}
        missing = httpx.post(url + "/infer", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "security_exception"
        wrong = httpx.post(url + "/infer", json=body, headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 403 and wrong.json()["status"] == 403
        assert httpx.post(url + "/infer", json=body, headers={"Authorization": TOKEN}).status_code == 403
        assert httpx.get(url + "/stats").status_code == 401
        assert httpx.get(url + "/info").status_code == 401
        ok = httpx.post(url + "/infer", json=body, headers=AUTH)
        assert ok.status_code == 200 and len(ok.json()["text_embedding"]) == 1
        # Probes and metrics stay open: kubelet and Prometheus carry no credential.
        assert [httpx.get(url + p).status_code for p in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]


def test_request_bodies_over_the_cap_are_refused(engine):
    cap = 4096
    with serve(engine, max_body_bytes=cap) as (url, state):
        big = b'{"input": ["' + b"x " * cap + b'"]}'
        declared = httpx.post(url + "/infer", content=big, headers=AUTH)
        assert declared.status_code == 413 and declared.json()["error"]["type"] == "status_exception"

        def stream() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        streamed = httpx.post(url + "/infer", content=stream(), headers=AUTH)
        assert streamed.status_code == 413
        small = b'{"input": ["' + b"x " * 100 + b'"]}'
        assert httpx.post(url + "/infer", content=iter([small]), headers=AUTH).status_code == 200
        assert state.batcher.inference_count == 1  # the refused bodies never reached the model


# -- D4: cancellation wherever the request is ---------------------------------------------------


def test_a_request_past_its_deadline_is_dropped_and_the_next_one_is_served(engine):
    with serve(engine, max_batch_size=4) as (url, state), Gate(engine) as gate:
        big = {"input": [f"long input number {i} " * 30 for i in range(40)]}
        given_up = httpx.post(url + "/infer", json=big, headers={**AUTH, "X-Infernetes-Timeout": "0.5"}, timeout=30)
        assert given_up.status_code == 408, given_up.text
        assert "dropped" in given_up.json()["error"]["reason"]
        assert gate.entered.is_set()  # the model thread holds the first batch of 4 rows
        gate.opened.set()
        small = httpx.post(url + "/infer", json={"input": ["small"]}, headers=AUTH, timeout=30)
        assert small.status_code == 200
        # The first batch (4 rows) had started; the other 36 rows of the abandoned request never ran.
        assert gate.rows == [4, 1]
        assert state.batcher.pending == 0
        metrics = httpx.get(url + "/metrics").text
        assert 'infernetes_cancelled_requests_total{allocation="0",deployment="default"} 1.0' in metrics


def test_a_running_batch_stops_between_slices_once_its_request_is_given_up(engine):
    """One segment of 40 rows x 128 tokens runs in slices of 8 rows: given up during the first slice, the
    other four slices never run."""
    with serve(engine, cancel_slice_tokens=1024) as (url, _state), Gate(engine) as gate:
        big = {"input": [f"a long input number {i} " * 40 for i in range(40)]}
        given_up = httpx.post(url + "/infer", json=big, headers={**AUTH, "X-Infernetes-Timeout": "0.5"}, timeout=30)
        assert given_up.status_code == 408
        gate.opened.set()
        assert httpx.post(url + "/infer", json={"input": ["small"]}, headers=AUTH, timeout=30).status_code == 200
        assert gate.rows == [8, 1]


def test_sliced_batches_give_the_same_vectors(engine):
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(40)]
    with serve(engine) as (url, _state):
        whole = httpx.post(url + "/infer", json={"input": texts}, headers=AUTH, timeout=30).json()
    with serve(engine, cancel_slice_tokens=64) as (url, _state):
        sliced = httpx.post(url + "/infer", json={"input": texts}, headers=AUTH, timeout=30).json()
    np.testing.assert_allclose([e["embedding"] for e in sliced["text_embedding"]],
                               [e["embedding"] for e in whole["text_embedding"]], atol=1e-5)


def test_a_client_that_leaves_is_dropped(engine):
    with serve(engine, max_batch_size=4) as (url, state), Gate(engine) as gate:
        big = {"input": [f"another long input {i} " * 30 for i in range(40)]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/infer", json=big, headers=AUTH, timeout=0.5)
        deadline = time.monotonic() + 30
        while state.batcher.pending:  # the worker notices the disconnect and lets go of the rows
            assert time.monotonic() < deadline, "the abandoned request still holds the queue"
            time.sleep(0.02)
        gate.opened.set()
        assert httpx.post(url + "/infer", json={"input": ["small"]}, headers=AUTH, timeout=30).status_code == 200
        assert gate.rows == [4, 1]


def test_chunking_runs_off_the_event_loop(engine, monkeypatch):
    import infernetes.worker.engine as engine_module

    threads: list[str] = []
    original = engine_module.chunk

    def recording_chunk(text: str, settings: dict[str, Any]) -> Any:
        threads.append(threading.current_thread().name)
        return original(text, settings)

    monkeypatch.setattr(engine_module, "chunk", recording_chunk)
    with serve(engine) as (url, _state):
        text = "A sentence here. " * 200
        resp = httpx.post(url + "/infer", json={"input": [text, "short"], "chunking": {"strategy": "sentence",
                          "max_chunk_size": 20, "sentence_overlap": 0}}, headers=AUTH, timeout=30)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["text_embedding"][0]["chunks"]) > 10
    assert len(threads) == 2 and "worker-loop" not in threads


def test_too_many_chunks_are_refused_before_all_inputs_are_chunked(engine, monkeypatch):
    import infernetes.worker.engine as engine_module

    calls = []
    original = engine_module.chunk
    monkeypatch.setattr(engine_module, "chunk", lambda t, s: calls.append(1) or original(t, s))
    request = InferRequest(inputs=["word " * 1000] * 50, chunking={"strategy": "word", "max_chunk_size": 10})
    with pytest.raises(TooManyRows, match="at least 200 inputs .* at most 150 fit"):
        engine.new_job(request, None, None, max_rows=150)
    assert len(calls) == 2  # 100 chunks per input: the second one passes the cap, the other 48 are never chunked
    calls.clear()
    with pytest.raises(Cancelled):
        engine.new_job(request, None, None, max_rows=10_000, cancelled=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_the_tokeniser_stops_for_a_cancelled_job(engine, monkeypatch):
    seen: list[str] = []
    job = Job(request=InferRequest(inputs=[f"text {i}" for i in range(20)]), rows=[f"text {i}" for i in range(20)],
              loop=None, future=None)  # type: ignore[arg-type]
    original = engine.clip

    def clip(text: str, prompt: str | None) -> str:
        seen.append(text)
        if len(seen) == 5:
            job.cancelled = True  # the client leaves while the rows are being prepared
        return original(text, prompt)

    monkeypatch.setattr(engine, "clip", clip)
    monkeypatch.setattr(engine, "tokenize", lambda *a: pytest.fail("a cancelled job was tokenised"))
    with pytest.raises(Cancelled):
        engine.prepare(job, 1 << 20, 128)
    assert len(seen) == 5


# -- D5: a huge input costs what the model reads -------------------------------------------------


def test_huge_inputs_are_cut_before_tokenising_and_embed_as_the_whole_text(engine, tiny_model_dir, monkeypatch):
    from sentence_transformers import SentenceTransformer

    texts = [
        "The quick brown fox jumps over the lazy dog. " * 5000,  # 225k characters
        " " * 60_000 + "words after a long run of spaces " * 3000,  # the first cuts hold no token at all
        "中文没有空格" * 20_000,  # no white space to cut at
        "short text",
    ]
    widths: list[list[int]] = []
    original = engine.tokenize

    def tokenize(rows, prompt, task):
        widths.append([len(r) for r in rows])
        return original(rows, prompt, task)

    monkeypatch.setattr(engine, "tokenize", tokenize)
    job = Job(request=InferRequest(inputs=texts), rows=list(texts), loop=None, future=None)  # type: ignore[arg-type]
    for seg in engine.prepare(job, 1 << 20, 128):
        engine.store(seg, engine.forward(seg.features))
    # The tokenizer saw a few thousand characters of each, never the 225k, 159k or 120k of them.
    assert widths[0][0] < 20_000 and widths[0][2] < 20_000
    assert widths[0][1] < 70_000  # the cut grows (x4) until it holds enough tokens
    assert widths[0][3] == len("short text")
    assert job.truncated == [True, True, True, False]
    reference = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(np.stack(job.outputs), reference, atol=1e-5)


def test_clip_keeps_more_tokens_than_the_model_reads(engine):
    text = "token " * 10_000
    head = engine.clip(text, None)
    assert len(head) < len(text) and text.startswith(head)
    assert engine._count_tokens(head) > engine.max_seq_length
    assert engine.clip("short", None) == "short"


def test_the_worker_imports_nothing_from_the_control_plane():
    worker = Path(__file__).resolve().parents[2] / "worker"
    offenders = [p.name for p in worker.glob("*.py")
                 if "infernetes.operator" in p.read_text() or "from ..operator" in p.read_text()]
    assert offenders == []


def _queued_answers(engine: TextEmbeddingEngine, texts: list[str], **overrides: Any) -> tuple[list[Any], list[int]]:
    """``texts`` sent one per request while the model thread is held, so they wait as one batch; their
    vectors, and the rows of each forward pass after the one that held the model."""
    from concurrent.futures import ThreadPoolExecutor

    with serve(engine, **overrides) as (url, state), Gate(engine) as gate, ThreadPoolExecutor(len(texts) + 1) as pool:
        def post(text: str) -> Any:
            return httpx.post(url + "/infer", json={"input": [text]}, headers=AUTH, timeout=60).json()

        first = pool.submit(post, "holds the model")
        assert gate.entered.wait(30)
        answers = [pool.submit(post, t) for t in texts]
        deadline = time.monotonic() + 30
        while state.batcher._queued_rows < len(texts):
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.01)
        gate.opened.set()
        first.result()
        return [a.result()["text_embedding"][0]["embedding"] for a in answers], gate.rows[1:]


def test_a_batch_of_mixed_lengths_runs_as_passes_with_the_same_vectors(engine):
    """WorkerSettings.forward_overhead_tokens reaches the batcher: with no cost per pass, every length runs in
    its own pass; with a huge one, the batch runs as one pass padded to its longest row. Same vectors."""
    texts = [("word " * (1 + i % 4 * 6)).strip() for i in range(12)]  # 4 lengths, 3 each
    split, split_passes = _queued_answers(engine, texts, forward_overhead_tokens=0)
    whole, whole_passes = _queued_answers(engine, texts, forward_overhead_tokens=10**9)
    assert whole_passes == [12] and split_passes == [3, 3, 3, 3]
    np.testing.assert_allclose(split, whole, atol=1e-5)
