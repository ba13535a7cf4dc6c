"""Broken disks (issue 13, D8, D9, D12): a data directory that turns read-only while serving, a corrupt
database found at start or at run time, and the permissions of what the server writes.

A read-only directory is made the way it happens to a server: as root, by remounting it read-only (a
bind mount over itself); as another user, by taking the write permission away. Files the server already
holds open stay writable either way, as on a real remount."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerThread, deployment_stats, es_error, free_port, put_endpoint, wait_for

from infernetes.operator.records import Deployment
from infernetes.operator.store import SqliteStore, StoreOpenError
from infernetes.worker.modelstore import ModelStore


def _mount_read_only(path: Path) -> bool:
    done = subprocess.run(f"mount --bind '{path}' '{path}' && mount -o remount,bind,ro '{path}'", shell=True,
                          capture_output=True)
    if done.returncode != 0:
        subprocess.run(["umount", str(path)], capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (and everything under it) read-only for new files and opens, until the block ends."""
    if os.geteuid() == 0:
        if not _mount_read_only(path):
            pytest.skip("running as root without the right to remount: cannot make a directory read-only")
        try:
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    dirs = [path, *(p for p in path.rglob("*") if p.is_dir())]
    modes = {d: d.stat().st_mode for d in dirs}
    for d in dirs:
        d.chmod(0o500)
    try:
        yield
    finally:
        for d, mode in modes.items():
            d.chmod(stat.S_IMODE(mode))


def serve(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`infernetes serve` as a user runs it; the cases here must end at start-up, so it must exit."""
    return subprocess.run([sys.executable, "-P", "-c", "from infernetes.operator.cli import main; main()", "serve", "--data-dir", str(data_dir),
                           "--port", str(free_port()), "--auth", "off", *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_read_only_data_dir_while_serving_fails_the_deployment_and_it_recovers(tmp_path, tiny_model_dir, caplog,
                                                                                 figures):
    ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    with ServerThread(tmp_path) as srv, srv.client(timeout=120) as client:
        with read_only(tmp_path):
            resp = put_endpoint(client, "text_embedding", "ro", "tiny")
            # Not 408 "keeps starting": the deployment failed, and the answer says why and what to do.
            assert resp.status_code >= 500, resp.text
            reason = es_error(resp)["reason"]
            assert "Read-only file system" in reason or "Permission denied" in reason, reason
            assert "writable" in reason
            stats = deployment_stats(client, "ro")
            assert stats["state"] == "failed" and "writable" in stats["reason"], stats
            infer = client.post("/_inference/ro", json={"input": "x"})
            assert infer.status_code == 503, infer.text  # not 429 "retry later" for ever
            assert "writable" in es_error(infer)["reason"]
            assert any("could not start a worker process" in r.getMessage() for r in caplog.records
                       if r.levelname == "ERROR"), "the failure must be logged"
        broken_until = time.monotonic()
        # Writable again: the supervisor's retry starts the worker, with no DELETE or PUT needed.
        wait_for(lambda: deployment_stats(client, "ro")["state"] == "started", timeout=90)
        recovered_s = time.monotonic() - broken_until
        resp = client.post("/_inference/ro", json={"input": "x"})
        assert resp.status_code == 200, resp.text
        figures["read_only_data_dir"] = {"put_status": 500, "recovered_after_writable_s": round(recovered_s, 1)}


def test_a_write_the_database_refuses_is_an_elasticsearch_error(tmp_path):
    import asyncio

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "infernetes.db")
        try:
            store._db.execute("PRAGMA query_only=1")  # SQLite answers every write as on a read-only file
            dep = Deployment(deployment_id="d", model_id="m", task_type="text_embedding", num_threads=1)
            with pytest.raises(Exception) as info:
                await store.create(None, dep)
            error = info.value
            assert type(error).__name__ == "StorageFailure", repr(error)
            assert error.status == 503 and error.body()["error"]["type"] == "i_o_exception"
            assert "readonly" in error.reason and "writable" in error.reason
        finally:
            store.close()

    asyncio.run(scenario())


def _corrupt_pages(db: Path) -> None:
    """Overwrite every page but the header page with garbage, as a failing disk does."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, pages = con.execute("PRAGMA page_size").fetchone()[0], con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        for page in range(1, pages):
            f.seek(page * page_size)
            f.write(bytes([0xA5]) * page_size)


def test_corruption_found_while_serving_is_a_clear_5xx_and_a_clear_start_up_error(tmp_path):
    with ServerThread(tmp_path) as srv, srv.client() as client:
        assert client.get("/_inference").status_code == 200
        _corrupt_pages(tmp_path / "infernetes.db")
        resp = client.get("/_inference")
        assert resp.status_code == 500, resp.text
        err = es_error(resp)
        assert err["type"] == "corrupt_state_exception", err
        assert "corrupt" in err["reason"] and "backup" in err["reason"]
        assert "DatabaseError" not in resp.text
        assert client.get("/_infernetes/health").status_code == 200  # the rest of the server still answers
    done = serve(tmp_path)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "corrupt" in done.stderr and "backup" in done.stderr, done.stderr


def test_a_corrupt_header_is_a_clear_start_up_error(tmp_path):
    SqliteStore(tmp_path / "infernetes.db").close()
    for name in os.listdir(tmp_path):
        if name.endswith(("-wal", "-shm")):
            (tmp_path / name).unlink()
    with open(tmp_path / "infernetes.db", "r+b") as f:
        f.write(b"this is no SQLite file header")
    with pytest.raises(StoreOpenError, match="corrupt"):
        SqliteStore(tmp_path / "infernetes.db")
    done = serve(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is corrupt" in done.stderr and "restore the file from a backup" in done.stderr, done.stderr


def test_a_read_only_data_dir_at_start_is_a_clear_start_up_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with read_only(data):
        done = serve(data)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot use the data directory" in done.stderr and "--data-dir" in done.stderr, done.stderr


@pytest.mark.slow
def test_the_data_dir_and_what_the_server_writes_are_private(tmp_path, tiny_model_dir):
    data = tmp_path / "fresh"
    ModelStore(data / "models").import_folder(tiny_model_dir, "tiny")
    data.chmod(0o755)  # as an older version left it: the server must not rely on a 0700 parent
    with ServerThread(data) as srv, srv.client(timeout=120) as client:
        assert put_endpoint(client, "text_embedding", "private", "tiny").status_code == 200
        logs = list((data / "logs").glob("*.log"))
        assert logs
        for path in [data / "infernetes.db", *logs]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
        for path in [data / "logs", data / "run"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, (path, oct(path.stat().st_mode))
    new = tmp_path / "new-data"
    ServerThread(new).start().stop()
    assert stat.S_IMODE(new.stat().st_mode) == 0o700


@pytest.mark.slow
def test_out_of_file_descriptors_fails_the_deployment_and_it_recovers(tmp_path, tiny_model_dir, monkeypatch):
    """The same path with no file descriptors left: the allocation's socket cannot be opened."""
    import errno

    from infernetes.operator.runtime import local

    ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    with ServerThread(tmp_path) as srv, srv.client(timeout=120) as client:
        real = local.socket.create_server

        def exhausted(*args, **kwargs):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        monkeypatch.setattr(local.socket, "create_server", exhausted)
        try:
            resp = put_endpoint(client, "text_embedding", "nofd", "tiny")
            assert resp.status_code >= 500 and "Too many open files" in es_error(resp)["reason"], resp.text
            stats = deployment_stats(client, "nofd")
            assert stats["state"] == "failed" and "Too many open files" in stats["reason"], stats
            infer = client.post("/_inference/nofd", json={"input": "x"})
            assert infer.status_code == 503 and "Too many open files" in es_error(infer)["reason"], infer.text
        finally:
            monkeypatch.setattr(local.socket, "create_server", real)
        wait_for(lambda: deployment_stats(client, "nofd")["state"] == "started", timeout=90)
        assert client.post("/_inference/nofd", json={"input": "x"}).status_code == 200
