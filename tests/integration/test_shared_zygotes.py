"""Deployments of the same model fork their workers from one zygote (weights shared copy-on-write across
deployments), each worker with its own deployment's settings; the zygote lives while one of them uses it."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest
from helpers import (ServerThread, build_tiny_sentence_model, deployment_stats, tiny_model_server, wait_for,
                     worker_pids)

from infernetes.operator.runtime.launch import Zygotes
from infernetes.operator.runtime.local import LocalRuntime
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    with tiny_model_server(tmp_path_factory.mktemp("shared-zygotes"), tiny_model_dir) as server:
        yield server


def runtime(srv: ServerThread) -> LocalRuntime:
    return srv.app.state.service.runtime


def start(client, inference_id: str, model_id: str, num_threads: int = 1) -> None:
    """PUT an endpoint of one allocation and wait for it (patiently: a zygote imports torch on a busy machine)."""
    resp = client.put(f"/_inference/text_embedding/{inference_id}", params={"timeout": "300s"}, timeout=330, json={
        "service": "elasticsearch",
        "service_settings": {"num_allocations": 1, "num_threads": num_threads, "model_id": model_id}})
    assert resp.status_code == 200, resp.text


def only_worker(deployment_id: str) -> psutil.Process:
    (pid,) = wait_for(lambda: (pids := worker_pids(deployment_id)) and len(pids) == 1 and pids,
                      what=f"one worker of {deployment_id}")
    return psutil.Process(pid)


def embed(client, inference_id: str) -> list[float]:
    resp = client.post(f"/_inference/{inference_id}", json={"input": "shared weights"})
    assert resp.status_code == 200, resp.text
    return resp.json()["text_embedding"][0]["embedding"]


def test_deployments_of_one_model_share_a_zygote_and_keep_their_own_settings(srv):
    rt = runtime(srv)
    with srv.client() as client:
        start(client, "one", "tiny", num_threads=1)
        start(client, "two", "tiny", num_threads=2)
        zygote = rt.deployments["one"].zygote
        assert zygote is not None and zygote is rt.deployments["two"].zygote and zygote.proc is not None
        assert zygote.users == {"one", "two"}
        # Both workers are forks of that one process, and each names its own deployment in `ps`.
        one, two = only_worker("one"), only_worker("two")
        assert one.ppid() == two.ppid() == zygote.proc.pid
        assert one.cmdline()[-4:] == ["--deployment-id", "one", "--allocation-id", "0"]
        # Settings that differ per deployment reach each worker, not the zygote: threads, logs.
        assert deployment_stats(client, "one")["nodes"][0]["threads_per_allocation"] == 1
        assert deployment_stats(client, "two")["nodes"][0]["threads_per_allocation"] == 2
        assert (rt.logs / "one-0.log").exists() and (rt.logs / "two-0.log").exists()
        assert embed(client, "one") == embed(client, "two")

        # Stopping one deployment stops its workers only; the other keeps its worker and serves.
        assert client.delete("/_inference/one").status_code == 200
        assert not one.is_running() or one.status() == psutil.STATUS_ZOMBIE
        assert zygote.proc.returncode is None and zygote.users == {"two"}
        assert only_worker("two").pid == two.pid
        assert len(embed(client, "two")) == 32

        # The last one to go closes it (it exits when told, not killed after the runtime's patience).
        assert client.delete("/_inference/two").status_code == 200
        assert zygote.proc.returncode == 0
        assert zygote not in rt.zygotes.by_key.values()


def test_a_dead_zygote_restarts_every_deployment_that_used_it(srv):
    rt = runtime(srv)
    with srv.client() as client:
        for name in ("left", "right"):
            start(client, name, "tiny")
        zygote = rt.deployments["left"].zygote
        assert zygote is rt.deployments["right"].zygote and zygote is not None and zygote.proc is not None
        old = zygote.proc.pid
        workers = [only_worker("left"), only_worker("right")]
        psutil.Process(old).send_signal(signal.SIGKILL)
        for name in ("left", "right"):
            wait_for(lambda: (s := deployment_stats(client, name))["nodes"][0].get("restart_count", 0) >= 1
                     and s["allocation_status"]["state"] == "fully_allocated", timeout=300, what=f"{name} restarted")
        # One new zygote again serves both.
        assert rt.deployments["left"].zygote is rt.deployments["right"].zygote is zygote
        assert zygote.proc.pid != old
        assert only_worker("left").ppid() == only_worker("right").ppid() == zygote.proc.pid
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert embed(client, "left") == embed(client, "right")
        for name in ("left", "right"):
            assert client.delete(f"/_inference/{name}").status_code == 200
        assert zygote.proc.returncode == 0


def test_a_reimported_model_never_forks_from_the_old_zygote(srv, tmp_path):
    rt = runtime(srv)
    store = ModelStore(srv.data_dir / "models")
    store.import_folder(build_tiny_sentence_model(tmp_path / "narrow", hidden=32), "evolving")
    with srv.client() as client:
        start(client, "before", "evolving")
        # New files under the same model id, while a deployment of the old ones runs.
        store.import_folder(build_tiny_sentence_model(tmp_path / "wide", hidden=48), "evolving", replace=True)
        start(client, "after", "evolving")
        old, new = rt.deployments["before"].zygote, rt.deployments["after"].zygote
        assert old is not None and new is not None and old is not new and old.proc.pid != new.proc.pid
        assert len(embed(client, "before")) == 32 and len(embed(client, "after")) == 48
        for name in ("before", "after"):
            assert client.delete(f"/_inference/{name}").status_code == 200
        assert old.proc.returncode == 0 and new.proc.returncode == 0


def zygote_children(zygote) -> list[int]:
    return [c.pid for c in psutil.Process(zygote.proc.pid).children()]


async def until(predicate, what: str) -> None:
    """Yield to the event loop until ``predicate()`` holds (60 s: a ceiling for a stuck system, not a pace)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
def zygotes(tmp_path, tiny_model_dir):
    """A zygote pool over the tiny model, with a function that makes a worker's settings."""
    model = ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    (tmp_path / "logs").mkdir()

    def settings(deployment_id: str) -> dict:
        return {"model_dir": str(model.path), "deployment_id": deployment_id, "allocation_id": "0"}

    return Zygotes(sys.executable, tmp_path, tmp_path / "logs", tmp_path), model, settings


def after_the_spawn_request(monkeypatch, action) -> None:
    """Run ``action()`` right after the next spawn request is written to a zygote, before its answer can arrive."""
    real = socket.send_fds

    def send_fds(*args, **kwargs):
        monkeypatch.setattr(socket, "send_fds", real)
        result = real(*args, **kwargs)
        action()
        return result

    monkeypatch.setattr(socket, "send_fds", send_fds)


def test_a_launch_cancelled_mid_fork_leaves_no_worker_behind(zygotes, monkeypatch):
    """A deployment deleted while its worker is being forked: the zygote lives on for the others, so the worker
    it forks for nobody must be stopped, not left serving until the zygote ends."""
    pool, model, settings = zygotes

    async def scenario() -> None:
        zygote = pool.acquire(model, "stays")
        pool.acquire(model, "goes")
        with socket.create_server(("127.0.0.1", 0)) as kept, socket.create_server(("127.0.0.1", 0)) as gone:
            try:
                stays = await zygote.launch(settings("stays"), kept.fileno())
                # The launch is cancelled at its next await: the one on the zygote's answer.
                after_the_spawn_request(monkeypatch, lambda: asyncio.current_task().cancel())
                launch = asyncio.create_task(zygote.launch(settings("goes"), gone.fileno()))
                await asyncio.gather(launch, return_exceptions=True)
                assert launch.cancelled()
                await until(lambda: not zygote.pending, "the zygote answered with the new worker's pid")
                await until(lambda: zygote_children(zygote) == [stays.pid],
                            f"the cancelled launch's worker runs on: {zygote_children(zygote)}")
                assert stays.returncode is None
            finally:
                await pool.release(zygote, "goes")
                await pool.release(zygote, "stays")
        assert zygote.proc.returncode == 0

    asyncio.run(scenario())


def test_a_zygote_whose_runtime_leaves_mid_fork_exits_cleanly(zygotes, monkeypatch):
    """The last deployment goes while a spawn request is on its way: the zygote forks, finds nobody to tell, and
    still stops its workers and exits 0 (not on a broken pipe, leaving the new worker to find out alone)."""
    pool, model, settings = zygotes

    async def scenario() -> None:
        zygote = pool.acquire(model, "only")
        with socket.create_server(("127.0.0.1", 0)) as first, socket.create_server(("127.0.0.1", 0)) as second:
            await zygote.launch(settings("only"), first.fileno())
            sent = asyncio.Event()
            after_the_spawn_request(monkeypatch, sent.set)
            launch = asyncio.create_task(zygote.launch(settings("only"), second.fileno()))
            await sent.wait()
            await pool.release(zygote, "only")
            # The launch ends (failed: nobody is left to fork for) instead of waiting for ever on a closed zygote.
            await asyncio.wait_for(asyncio.gather(launch, return_exceptions=True), 60)
        assert zygote.proc.returncode == 0

    asyncio.run(scenario())
