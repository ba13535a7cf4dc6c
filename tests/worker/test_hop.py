"""The embedded gateway's binary hop (worker/hop.py and the router's Hops): frames, the credential, body cap,
the client leaving, timeouts, stale kept connections, graceful shutdown, and the real server using it."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import orjson
import pytest
from helpers import put_endpoint, wait_for

from infernetes.operator.errors import RequestTimeout, ServiceUnavailable
from infernetes.operator.runtime.router import Hops, HopUnavailable, Router
from infernetes.worker import hop

TOKEN = "s3cret"


class State:
    """uvicorn's ServerState, as far as the hop uses it."""

    def __init__(self) -> None:
        self.connections: set[object] = set()


def refuse(status: int, kind: str, reason: str) -> bytes:
    return orjson.dumps({"error": {"type": kind, "reason": reason}, "status": status})


class Worker:
    """A hop server whose handler echoes, or waits until released (to see cancellation and draining)."""

    def __init__(self, path: Path, max_body: int = 1 << 20) -> None:
        self.path = path
        self.state = State()
        self.calls: list[tuple[bytes, float | None]] = []
        self.gone: list[asyncio.Future[None]] = []
        self.release = asyncio.Event()
        self.hold = False
        self.server = hop.HopServer(path, self.handle, refuse, TOKEN, max_body, self.state)

    async def handle(self, body: bytes, timeout: float | None, gone: asyncio.Future[None]) -> hop.Answer:
        self.calls.append((body, timeout))
        self.gone.append(gone)
        if self.hold:
            await asyncio.wait([asyncio.ensure_future(self.release.wait()), gone], return_when=asyncio.FIRST_COMPLETED)
        return 200, {"x-infernetes-prompt-tokens": "7"}, b'{"echo":' + body + b"}", None


@pytest.fixture
async def worker(tmp_path):
    w = Worker(tmp_path / "w.sock")
    await w.server.start()
    yield w
    w.server.shutdown()


async def test_frames_round_trip_and_bad_frames_are_refused():
    reader = asyncio.StreamReader()
    for part in hop.encode({"a": 1}, b"body"):
        reader.feed_data(part)
    reader.feed_eof()
    assert await hop.read_frame(reader) == ({"a": 1}, b"body")
    assert await hop.read_frame(reader) is None  # a clean end

    big = asyncio.StreamReader()
    big.feed_data(struct.pack(">II", hop.MAX_HEADER_BYTES + 1, 0))
    with pytest.raises(hop.FrameError, match="header"):
        await hop.read_frame(big)
    listed = asyncio.StreamReader()
    for part in hop.encode([1], b""):  # type: ignore[arg-type]
        listed.feed_data(part)
    with pytest.raises(hop.FrameError, match="object"):
        await hop.read_frame(listed)


async def test_a_request_and_its_answer(worker):
    hops = Hops(TOKEN)
    status, body, headers = await hops.request(str(worker.path), b'"hi"', 12.5)
    assert (status, body) == (200, b'{"echo":"hi"}') and headers == {"x-infernetes-prompt-tokens": "7"}
    assert worker.calls == [(b'"hi"', 12.5)]
    # The connection is kept for the next request.
    assert len(hops.idle[str(worker.path)]) == 1
    await hops.request(str(worker.path), b"2", 5)
    assert len(hops.idle[str(worker.path)]) == 1 and len(worker.server.connections) == 1
    hops.close()


async def test_the_credential_is_required(worker):
    for credential in (None, "wrong"):
        status, body, _ = await Hops(credential).request(str(worker.path), b"1", 5)
        assert status == 403 and b"security_exception" in body
    assert worker.calls == []
    assert (worker.path.stat().st_mode & 0o777) == 0o600


async def test_a_body_over_the_cap_is_refused_unread(tmp_path):
    w = Worker(tmp_path / "cap.sock", max_body=10)
    await w.server.start()
    try:
        status, body, _ = await Hops(TOKEN).request(str(w.path), b"x" * 11, 5)
        assert status == 413 and w.calls == []
    finally:
        w.server.shutdown()


async def test_the_gateway_leaving_cancels_the_request(worker):
    worker.hold = True
    task = asyncio.ensure_future(Hops(TOKEN).request(str(worker.path), b"1", 30))
    await wait_for_async(lambda: worker.gone)
    assert not worker.gone[0].done()
    task.cancel()  # the gateway's handler is cancelled (its client disconnected): the connection closes
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(worker.gone[0], 10)


async def test_a_timeout_is_the_routers_408_and_the_worker_sees_the_request_go(worker):
    worker.hold = True
    router = Router(TOKEN, hop_path=lambda url: str(worker.path))
    with pytest.raises(RequestTimeout):
        await router.forward(["http://127.0.0.1:1"], b"1", 0.3)
    assert worker.calls[0][1] == pytest.approx(0.3)
    await asyncio.wait_for(worker.gone[0], 10)
    await router.close()


async def test_a_kept_connection_the_worker_closed_is_replaced(worker, tmp_path):
    hops = Hops(TOKEN)
    await hops.request(str(worker.path), b"1", 5)
    # The worker restarts: its connections close, and a new one listens on the same path.
    worker.server.shutdown()
    replacement = Worker(worker.path)
    await replacement.server.start()
    try:
        status, body, _ = await hops.request(str(worker.path), b"2", 5)
        assert (status, body) == (200, b'{"echo":2}') and replacement.calls == [(b"2", 5)]
    finally:
        replacement.server.shutdown()
        hops.close()


async def test_no_listener_falls_back_to_http(tmp_path, monkeypatch):
    with pytest.raises(HopUnavailable):
        await Hops(TOKEN).request(str(tmp_path / "nothing.sock"), b"1", 5)
    router = Router(TOKEN, hop_path=lambda url: str(tmp_path / "nothing.sock"))
    posted: list[str] = []

    async def post(url: str, payload: bytes, timeout: float) -> tuple[int, bytes, dict[str, str]]:
        posted.append(url)
        return 200, b"{}", {}

    monkeypatch.setattr(router, "_post", post)
    assert await router.forward(["http://127.0.0.1:9"], b"1", 5) == (200, b"{}", {})
    assert posted == ["http://127.0.0.1:9/infer"]
    # Other paths (the tokenizer's) always take HTTP.
    await router.forward(["http://127.0.0.1:9"], b"1", 5, path="/tokenize")
    assert posted[-1] == "http://127.0.0.1:9/tokenize"


async def test_a_worker_dying_mid_request_is_retried_elsewhere(worker, tmp_path):
    dying = Worker(tmp_path / "dying.sock")
    dying.hold = True
    await dying.server.start()
    paths = {"http://a": str(dying.path), "http://b": str(worker.path)}
    failed: list[str] = []
    router = Router(TOKEN, hop_path=paths.get)
    router.pick = lambda urls: urls[0]  # type: ignore[method-assign]
    task = asyncio.ensure_future(router.forward(["http://a", "http://b"], b"1", 10, on_failure=failed.append))
    await wait_for_async(lambda: dying.calls)
    for conn in list(dying.server.connections):
        conn.close()  # the process died: its end of the connection resets
    assert await asyncio.wait_for(task, 10) == (200, b'{"echo":1}', {"X-Infernetes-Prompt-Tokens": "7"})
    assert failed == ["http://a"]
    dying.server.shutdown()
    await router.close()

    with pytest.raises(ServiceUnavailable):
        await Router(TOKEN, hop_path=paths.get).forward(["http://a"], b"1", 5)


async def test_shutdown_finishes_the_running_request_and_closes_idle_ones(worker):
    idle, busy = Hops(TOKEN), Hops(TOKEN)
    await idle.request(str(worker.path), b"1", 5)
    worker.hold = True
    running = asyncio.ensure_future(busy.request(str(worker.path), b"2", 30))
    await wait_for_async(lambda: len(worker.calls) == 2)
    worker.server.shutdown()
    assert not worker.path.exists()
    assert len(worker.state.connections) == 1  # uvicorn waits for this one before the model stops
    worker.release.set()
    assert (await asyncio.wait_for(running, 10))[1] == b'{"echo":2}'
    await wait_for_async(lambda: not worker.state.connections)
    with pytest.raises(HopUnavailable):
        await Hops(TOKEN).request(str(worker.path), b"3", 5)


async def wait_for_async(condition, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


@pytest.mark.slow
def test_the_embedded_server_sends_inference_over_the_hop(server):
    runtime = server.app.state.service.runtime
    with server.client() as client:
        assert put_endpoint(client, "text_embedding", "hop-e", "tiny").status_code == 200
        try:
            resp = client.post("/_inference/text_embedding/hop-e", json={"input": ["a", "b"]})
            assert resp.status_code == 200 and len(resp.json()["text_embedding"]) == 2
            url = runtime.deployments["hop-e"].ready_urls()[0]
            path = runtime.hop_paths[url]
            assert Path(path).exists() and runtime.router.hops.idle[path]
            # Bad input answers as over HTTP.
            resp = client.post("/_inference/text_embedding/hop-e", json={"input": "x", "chunking": 3})
            assert resp.status_code == 400, resp.text
        finally:
            client.delete("/_inference/text_embedding/hop-e")
        wait_for(lambda: url not in runtime.hop_paths, timeout=60)
