"""Interleavings of PUT, DELETE, _update, _start, _stop and races between them, against the real local
runtime (issue 13, D2). Hypothesis drives the sequence; after every step the system must hold:

- no answer is a 5xx;
- every endpoint GET lists answers inference (its PUT has returned, so it must serve);
- no worker process runs for a deployment that _stats does not list (no zombie).

Each new deployment starts a worker from the tiny model, so the number of steps is kept small.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import ServerThread, tiny_model_server
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule


pytestmark = pytest.mark.slow

OURS = ("alpha", "beta")  # the server also lists Elasticsearch's default endpoints: they are not ours to test
IDS = st.sampled_from(OURS)
DEPLOYMENT = "shared-dep"


@pytest.fixture(scope="module")
def state_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    with tiny_model_server(tmp_path_factory.mktemp("state-machine"), tiny_model_dir) as srv:
        yield srv


ZYGOTE = "(zygote)"  # one per model, shared by every deployment of it: all of this module's use the tiny model


def server_workers() -> dict[int, str]:
    """Worker and zygote processes this test process started (directly or through a zygote), by deployment
    (a zygote as ZYGOTE: it serves whichever deployments of its model there are)."""
    me = os.getpid()
    out = {}
    for p in psutil.Process(me).children(recursive=True):
        try:
            cmd = p.cmdline()
            if p.status() == psutil.STATUS_ZOMBIE or not any("infernetes.worker" in c for c in cmd):
                continue
        except psutil.Error:
            continue
        dep = cmd[cmd.index("--deployment-id") + 1] if "--deployment-id" in cmd else \
            ZYGOTE if "infernetes.worker.zygote" in cmd else "?"
        out[p.pid] = dep
    return out


def body(allocations: int = 1, **settings) -> dict:
    ss = {"model_id": "tiny", "num_threads": 1, "num_allocations": allocations, **settings}
    return {"service": "elasticsearch", "service_settings": ss}


class Lifecycle(RuleBasedStateMachine):
    server: ServerThread
    requests = 0  # over all examples, for the figures

    def __init__(self) -> None:
        super().__init__()
        self.client = self.server.client(timeout=120)
        self.pool = concurrent.futures.ThreadPoolExecutor(4)
        self.seen: list[tuple[str, int]] = []

    def call(self, method: str, url: str, **kwargs) -> httpx.Response:
        with self.server.client(timeout=120) as c:  # a client per call: rules run requests side by side
            resp = c.request(method, url, **kwargs)
        self.seen.append((f"{method} {url}", resp.status_code))
        Lifecycle.requests += 1
        assert resp.status_code < 500, (method, url, resp.status_code, resp.text)
        if resp.status_code >= 400:
            assert resp.json()["error"]["reason"], resp.text  # Elasticsearch-shaped
        return resp

    # -- rules ---------------------------------------------------------------------------------

    @rule(inference_id=IDS, allocations=st.integers(1, 2))
    def put(self, inference_id: str, allocations: int) -> None:
        resp = self.call("PUT", f"/_inference/text_embedding/{inference_id}", json=body(allocations))
        assert resp.status_code in (200, 400), resp.text

    @rule(inference_id=IDS)
    def put_on_shared_deployment(self, inference_id: str) -> None:
        resp = self.call("PUT", f"/_inference/text_embedding/{inference_id}",
                         json={"service": "elasticsearch", "service_settings": {"deployment_id": DEPLOYMENT}})
        assert resp.status_code in (200, 400, 404), resp.text

    @rule(inference_id=IDS)
    def delete(self, inference_id: str) -> None:
        resp = self.call("DELETE", f"/_inference/{inference_id}?force=true")
        assert resp.status_code in (200, 404), resp.text

    @rule(inference_id=IDS, allocations=st.integers(1, 2))
    def update(self, inference_id: str, allocations: int) -> None:
        resp = self.call("PUT", f"/_inference/{inference_id}/_update",
                         json={"service_settings": {"num_allocations": allocations}})
        assert resp.status_code in (200, 404), resp.text

    @rule()
    def start_shared(self) -> None:
        resp = self.call("POST", f"/_ml/trained_models/tiny/deployment/_start?deployment_id={DEPLOYMENT}")
        assert resp.status_code in (200, 400), resp.text

    @rule()
    def stop_shared(self) -> None:
        resp = self.call("POST", f"/_ml/trained_models/{DEPLOYMENT}/deployment/_stop?force=true")
        assert resp.status_code in (200, 404), resp.text

    @rule(inference_id=IDS, delay=st.sampled_from([0.0, 0.05, 0.3]))
    def delete_then_put(self, inference_id: str, delay: float) -> None:
        """The issue's race: DELETE of an endpoint, and a PUT of the same id while it drains."""
        deleting = self.pool.submit(self.call, "DELETE", f"/_inference/{inference_id}?force=true")
        time.sleep(delay)
        putting = self.pool.submit(self.call, "PUT", f"/_inference/text_embedding/{inference_id}", json=body())
        assert deleting.result().status_code in (200, 404)
        assert putting.result().status_code in (200, 400, 409)

    @rule(inference_id=IDS, delay=st.sampled_from([0.1, 0.4]))
    def put_then_delete(self, inference_id: str, delay: float) -> None:
        """A DELETE while the PUT still waits for its worker to start (the stopped allocations' sockets are
        closed under the waiting PUT: it used to answer 500 "bad file descriptor")."""
        putting = self.pool.submit(self.call, "PUT", f"/_inference/text_embedding/{inference_id}", json=body())
        time.sleep(delay)
        deleting = self.pool.submit(self.call, "DELETE", f"/_inference/{inference_id}?force=true")
        assert putting.result().status_code in (200, 400, 409)
        assert deleting.result().status_code in (200, 404, 409)

    @rule(inference_id=IDS)
    def two_puts(self, inference_id: str) -> None:
        first = self.pool.submit(self.call, "PUT", f"/_inference/text_embedding/{inference_id}", json=body())
        second = self.pool.submit(self.call, "PUT", f"/_inference/text_embedding/{inference_id}", json=body(2))
        codes = sorted([first.result().status_code, second.result().status_code])
        assert codes in ([200, 400], [400, 400]), codes  # never two endpoints, never an error

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def listed_endpoints_serve(self) -> None:
        for ep in self.call("GET", "/_inference").json()["endpoints"]:
            if ep["inference_id"] not in OURS:
                continue
            resp = self.call("POST", f"/_inference/text_embedding/{ep['inference_id']}", json={"input": "hi"})
            assert resp.status_code == 200, (ep, resp.text, self.seen[-12:])
            assert len(resp.json()["text_embedding"]) == 1

    @invariant()
    def no_worker_without_a_deployment(self) -> None:
        stats = self.call("GET", "/_ml/trained_models/_stats").json()["trained_model_stats"]
        deployments = {s["deployment_stats"]["deployment_id"] for s in stats if "deployment_stats" in s}
        orphans = {pid: dep for pid, dep in server_workers().items()
                   if dep not in deployments and not (dep == ZYGOTE and deployments)}
        assert not orphans, (orphans, deployments, self.seen[-12:])

    def teardown(self) -> None:
        try:
            for ep in self.call("GET", "/_inference").json()["endpoints"]:
                if ep["inference_id"] in OURS:
                    self.call("DELETE", f"/_inference/{ep['inference_id']}?force=true")
            stats = self.call("GET", "/_ml/trained_models/_stats").json()["trained_model_stats"]
            for s in stats:
                if "deployment_stats" in s:
                    self.call("POST", f"/_ml/trained_models/{s['deployment_stats']['deployment_id']}/deployment/"
                                      "_stop?force=true")
            assert server_workers() == {}
        finally:
            self.pool.shutdown()
            self.client.close()


def test_no_interleaving_leaves_a_zombie_or_a_5xx(state_server, figures):
    Lifecycle.server = state_server
    started = time.monotonic()
    run = Lifecycle.TestCase
    run.settings = settings(max_examples=3, stateful_step_count=5, deadline=None, database=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()
    figures["state_machine"] = {"examples": 3, "max_steps": 5, "requests": Lifecycle.requests, "5xx": 0,
                                "zombies": 0, "seconds": round(time.monotonic() - started, 1)}


def _both(server: ServerThread, first: tuple, second: tuple, delay: float) -> tuple:
    with concurrent.futures.ThreadPoolExecutor(2) as pool, server.client(timeout=120) as a, \
            server.client(timeout=120) as b:
        one = pool.submit(a.request, *first[:2], **first[2])
        time.sleep(delay)
        two = pool.submit(b.request, *second[:2], **second[2])
        return one.result(), two.result()


def test_delete_while_the_put_waits_for_its_worker(state_server):
    """The PUT waits for the worker while DELETE stops it and closes its socket: no 500 "bad file descriptor"."""
    put, delete = _both(state_server, ("PUT", "/_inference/text_embedding/waiting", {"json": body()}),
                        ("DELETE", "/_inference/waiting", {}), delay=0.3)
    assert put.status_code < 500 and delete.status_code < 500, (put.text, delete.text)
    with state_server.client() as client:
        assert client.get("/_inference/waiting").status_code == 404
        if delete.status_code == 404:  # the DELETE came first: clean up after the PUT
            client.delete("/_inference/waiting")
    assert server_workers() == {}


def test_put_while_the_delete_drains(state_server):
    """The issue's zombie: DELETE of an endpoint, then a PUT of the same id while its workers stop."""
    with state_server.client(timeout=120) as client:
        assert client.put("/_inference/text_embedding/again", json=body()).status_code == 200
    delete, put = _both(state_server, ("DELETE", "/_inference/again", {}),
                        ("PUT", "/_inference/text_embedding/again", {"json": body()}), delay=0.05)
    assert delete.status_code == 200, delete.text
    assert put.status_code in (200, 400), put.text
    with state_server.client(timeout=120) as client:
        if put.status_code == 200:
            resp = client.post("/_inference/again", json={"input": "x"})
            assert resp.status_code == 200, resp.text  # listed, so it serves
            assert sorted(server_workers().values()) == sorted(["again", ZYGOTE])
            client.delete("/_inference/again")
    assert server_workers() == {}
