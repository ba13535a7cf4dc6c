"""Where endpoint and deployment definitions live.

:class:`Store` is what the control plane needs; :class:`SqliteStore` keeps them in one SQLite
file for the embedded runtime (WAL journal, every change one transaction, so a ``kill -9`` at
any moment leaves either the old or the new state). In a cluster the custom resources are the
store (:mod:`infernetes.operator.kube.store`).

Every SQLite call runs on one thread of its own: a write with ``synchronous=FULL`` waits for the
disk, and that must not stall the event loop that serves every other request. A disk that fails
(read-only, full, out of file descriptors) or a database that is corrupt surfaces as an
Elasticsearch-shaped error with the reason, never as a raw ``sqlite3`` exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .errors import ResourceAlreadyExists, ResourceNotFound, StorageCorrupt, StorageFailure
from .records import Deployment, Endpoint


class Store(Protocol):
    async def create(self, endpoint: Endpoint | None, deployment: Deployment | None) -> None:
        """Store a new endpoint and/or deployment atomically; raise ResourceAlreadyExists on a clash."""

    async def get_endpoint(self, inference_id: str) -> Endpoint | None: ...
    async def list_endpoints(self) -> list[Endpoint]: ...
    async def delete_endpoint(self, inference_id: str, *, with_deployment: bool) -> None: ...
    async def replace_endpoint(self, endpoint: Endpoint) -> None: ...
    async def get_deployment(self, deployment_id: str) -> Deployment | None: ...
    async def list_deployments(self) -> list[Deployment]: ...
    async def update_deployment(self, deployment: Deployment) -> None: ...
    async def delete_deployment(self, deployment_id: str) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    inference_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


log = logging.getLogger("infernetes.store")
T = TypeVar("T")
CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE",
           "SQLITE_CORRUPT_VTAB"}


class StoreOpenError(Exception):
    """The store cannot be opened at start-up; the message says what is wrong and what to do."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name in CORRUPT or (type(exc) is sqlite3.DatabaseError and "malformed" in str(exc)) or \
        "not a database" in str(exc)


def storage_error(path: Path, exc: sqlite3.Error | OSError) -> StorageFailure | StorageCorrupt:
    """The Elasticsearch-shaped error for a failed read or write of the store."""
    if isinstance(exc, sqlite3.Error) and _is_corrupt(exc):
        return StorageCorrupt(
            f"the endpoint database [{path}] is corrupt ({exc}); stop the server, restore the file from a "
            "backup or move it away (the endpoints then have to be created again), and start it again")
    return StorageFailure(
        f"could not access the endpoint database [{path}] ({exc}); check that the data directory "
        f"[{path.parent}] is writable and the disk has space and free file descriptors, then retry")


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # One thread for every SQLite call, in order: the event loop never waits for the disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infernetes-store")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # private from its first byte
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems[:3]))
            # A write at start: a read-only file or directory shows now, not at the first PUT.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            raise StoreOpenError(storage_error(self.path, exc).reason) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError) as exc:
            error = storage_error(self.path, exc)
            log.error("%s", error.reason)
            raise error from None

    async def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                return result

        return await self._run(run)

    async def _one(self, sql: str, key: str) -> dict | None:
        def read() -> dict | None:
            with self._lock:
                row = self._db.execute(sql, (key,)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(read)

    async def _all(self, sql: str) -> list[dict]:
        def read() -> list[dict]:
            with self._lock:
                return [json.loads(r[0]) for r in self._db.execute(sql).fetchall()]

        return await self._run(read)

    async def create(self, endpoint: Endpoint | None, deployment: Deployment | None) -> None:
        def write(db: sqlite3.Connection) -> None:
            if endpoint is not None and db.execute(
                "SELECT 1 FROM endpoints WHERE inference_id=?", (endpoint.inference_id,)
            ).fetchone():
                raise ResourceAlreadyExists(f"Inference endpoint [{endpoint.inference_id}] already exists")
            if deployment is not None:
                if db.execute(
                    "SELECT 1 FROM deployments WHERE deployment_id=?", (deployment.deployment_id,)
                ).fetchone():
                    raise ResourceAlreadyExists(
                        f"Could not start model deployment because an existing deployment with the same id "
                        f"[{deployment.deployment_id}] exists"
                    )
                db.execute(
                    "INSERT INTO deployments VALUES (?, ?)",
                    (deployment.deployment_id, json.dumps(deployment.to_dict())),
                )
            if endpoint is not None:
                if not db.execute(
                    "SELECT 1 FROM deployments WHERE deployment_id=?", (endpoint.deployment_id,)
                ).fetchone():
                    raise ResourceNotFound(f"Could not find deployment [{endpoint.deployment_id}]")
                db.execute(
                    "INSERT INTO endpoints VALUES (?, ?, ?)",
                    (endpoint.inference_id, endpoint.deployment_id, json.dumps(endpoint.to_dict())),
                )

        await self._tx(write)

    async def get_endpoint(self, inference_id: str) -> Endpoint | None:
        data = await self._one("SELECT data FROM endpoints WHERE inference_id=?", inference_id)
        return Endpoint.from_dict(data) if data else None

    async def list_endpoints(self) -> list[Endpoint]:
        return [Endpoint.from_dict(d) for d in await self._all("SELECT data FROM endpoints ORDER BY inference_id")]

    async def delete_endpoint(self, inference_id: str, *, with_deployment: bool) -> None:
        def delete(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT deployment_id FROM endpoints WHERE inference_id=?", (inference_id,)).fetchone()
            if row is None:
                raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
            db.execute("DELETE FROM endpoints WHERE inference_id=?", (inference_id,))
            if with_deployment:
                db.execute("DELETE FROM deployments WHERE deployment_id=?", (row[0],))

        await self._tx(delete)

    async def replace_endpoint(self, endpoint: Endpoint) -> None:
        def update(db: sqlite3.Connection) -> None:
            cur = db.execute("UPDATE endpoints SET data=? WHERE inference_id=?",
                             (json.dumps(endpoint.to_dict()), endpoint.inference_id))
            if cur.rowcount == 0:
                raise ResourceNotFound(f"Inference endpoint not found [{endpoint.inference_id}]")

        await self._tx(update)

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        data = await self._one("SELECT data FROM deployments WHERE deployment_id=?", deployment_id)
        return Deployment.from_dict(data) if data else None

    async def list_deployments(self) -> list[Deployment]:
        return [Deployment.from_dict(d) for d in await self._all("SELECT data FROM deployments ORDER BY deployment_id")]

    async def update_deployment(self, deployment: Deployment) -> None:
        def update(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deployments SET data=? WHERE deployment_id=?",
                (json.dumps(deployment.to_dict()), deployment.deployment_id),
            )
            if cur.rowcount == 0:
                raise ResourceNotFound(f"Could not find deployment [{deployment.deployment_id}]")

        await self._tx(update)

    async def delete_deployment(self, deployment_id: str) -> None:
        await self._tx(lambda db: db.execute("DELETE FROM deployments WHERE deployment_id=?", (deployment_id,)))
