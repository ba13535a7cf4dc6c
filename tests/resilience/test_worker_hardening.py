"""Workers under hostile local callers and given-up requests, through the embedded runtime (issue 13, D4 and D12).

Only the gateway holds the run's credential: any other local process gets 401/403 from a worker, and the
credential never shows on a command line. A large request whose client gave up (``?timeout=``) is dropped
inside the worker, so the next small request is answered at once and the abandoned rows never run.
"""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest
from helpers import ServerThread, put_endpoint

from infernetes.operator.embedded import EmbeddedOptions
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_dir, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("hardening")
    store = ModelStore(data_dir / "models")
    store.import_folder(minilm_dir, "minilm")
    store.import_folder(tiny_model_dir, "tiny")
    with ServerThread(data_dir, EmbeddedOptions(queue_capacity=2048, max_inputs=2048)) as srv:
        with srv.client() as c:
            assert put_endpoint(c, "text_embedding", "guarded", "tiny").status_code == 200
            assert put_endpoint(c, "text_embedding", "slow", "minilm").status_code == 200
        yield srv


def allocation_url(srv: ServerThread, deployment_id: str) -> str:
    return srv.app.state.service.runtime.deployments[deployment_id].allocations[0].url


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_workers_answer_only_the_gateway(served):
    runtime = served.app.state.service.runtime
    url = allocation_url(served, "guarded")
    with served.client() as c:
        assert c.post("/_inference/text_embedding/guarded", json={"input": ["through the gateway"]}).status_code == 200
    # Another local process, without the credential or with a guessed one.
    missing = httpx.post(url + "/infer", json={"input": ["direct"]})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "security_exception"
    assert httpx.post(url + "/infer", json={"input": ["direct"]},
                      headers={"Authorization": "Bearer guess"}).status_code == 403
    assert httpx.get(url + "/stats").status_code == 401
    # The credential is nowhere on a command line: the workers are forks (or children) that got it privately.
    pids = [a.handle.pid for d in runtime.deployments.values() for a in d.allocations if a.handle]
    assert pids
    for pid in pids:
        proc = psutil.Process(pid)
        for p in (proc, proc.parent()):
            assert runtime.credential not in " ".join(p.cmdline())


def test_spawned_workers_get_the_credential_in_their_environment(served, monkeypatch):
    """Where workers are spawned rather than forked, the credential travels in the environment, not argv."""
    runtime = served.app.state.service.runtime
    seen = {}

    async def launch(args, fd, log_file, env=None):
        seen.update(args=args, env=env)
        raise RuntimeError("captured")

    monkeypatch.setattr(runtime.spawner, "launch", launch)
    monkeypatch.setattr(runtime, "settings", type(runtime.settings)(**{**runtime.settings.__dict__,
                                                                       "fork_workers": False}))
    alloc = runtime.deployments["guarded"].allocations[0]
    import asyncio

    with pytest.raises(RuntimeError, match="captured"):
        asyncio.run(runtime._launch(alloc))
    assert seen["env"] == {"INFERNETES_WORKER_AUTH_TOKEN": runtime.credential}
    assert runtime.credential not in " ".join(seen["args"])


def test_worker_memory_returns_near_its_baseline_after_large_inputs(served, figures):
    """The issue's D5: a 6 MB request once took a worker from 434 MB to 1,142 MB for good. Inputs are cut to
    what the model reads before tokenising, and freed memory is handed back after large requests."""
    runtime = served.app.state.service.runtime
    (alloc,) = runtime.deployments["slow"].allocations
    worker = psutil.Process(alloc.handle.pid)
    with served.client(timeout=300) as c:
        for _ in range(5):
            assert c.post("/_inference/text_embedding/slow", json={"input": ["warm up"] * 8}).status_code == 200
        baseline = worker.memory_info().rss / 2**20
        sentence = "the northern lights glow green over the cold northern sea tonight "
        text = sentence * (199_000 // len(sentence))
        for n in (30, 30):  # 6 MB each: 30 inputs of 199k characters (the gateway's per-input limit is 200k)
            resp = c.post("/_inference/text_embedding/slow?timeout=300s", json={"input": [text] * n})
            assert resp.status_code == 200
            assert all(e.get("is_truncated") for e in resp.json()["text_embedding"])
    deadline = time.monotonic() + 30
    while (after := worker.memory_info().rss / 2**20) > baseline * 1.5:  # the trim runs after the answer
        assert time.monotonic() < deadline, f"worker RSS {after:.0f} MB stayed above 1.5 x {baseline:.0f} MB"
        time.sleep(0.2)
    figures["worker_rss_after_6mb_requests"] = {"baseline_mb": round(baseline, 1), "after_mb": round(after, 1)}


def test_a_given_up_request_is_dropped_and_the_next_is_served(served, figures):
    """The issue's D4: many long inputs with ?timeout=, then a small request on the same allocation."""
    url = allocation_url(served, "slow")
    inputs_before = metric(url, "infernetes_inference_inputs_total")
    cancelled_before = metric(url, "infernetes_cancelled_requests_total")
    # The request: 150 inputs of 150k characters (22 MB), given up after 1 s.
    big = {"input": [f"passage {i}: " + "the northern lights glow over the sea " * 3950 for i in range(150)]}
    result: dict[str, httpx.Response] = {}

    def give_up() -> None:
        with served.client(timeout=120) as c:
            result["big"] = c.post("/_inference/text_embedding/slow?timeout=1s", json=big)

    thread = threading.Thread(target=give_up)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert result["big"].status_code == 408, result["big"].text
    t0 = time.monotonic()
    with served.client(timeout=120) as c:
        small = c.post("/_inference/text_embedding/slow", json={"input": ["a small request"]})
    small_s = time.monotonic() - t0
    assert small.status_code == 200
    deadline = time.monotonic() + 60
    while metric(url, "infernetes_cancelled_requests_total") < cancelled_before + 1:
        assert time.monotonic() < deadline, "the worker never dropped the abandoned request"
        time.sleep(0.05)
    ran = metric(url, "infernetes_inference_inputs_total") - inputs_before
    # The rows still queued at the deadline never ran (each batch holds 32 of these 256-token rows).
    assert 1 <= ran < 150, ran
    figures["abandoned_large_request"] = {"inputs_sent": 150, "chars_per_input": len(big["input"][0]),
                                          "inputs_run": ran, "small_request_s": round(small_s, 3)}
