"""Where endpoint and deployment definitions live.

:class:`Store` is what the control plane needs; :class:`SqliteStore` keeps them in one SQLite
file for the embedded runtime (WAL journal, every change one transaction, so a ``kill -9`` at
any moment leaves either the old or the new state). In a cluster the custom resources are the
store (:mod:`infernetes.operator.kube.store`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from .errors import ResourceAlreadyExists, ResourceNotFound
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


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):  # type: ignore[no-untyped-def]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _one(self, sql: str, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute(sql, (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _all(self, sql: str) -> list[dict]:
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute(sql).fetchall()]

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

        self._tx(write)

    async def get_endpoint(self, inference_id: str) -> Endpoint | None:
        data = self._one("SELECT data FROM endpoints WHERE inference_id=?", inference_id)
        return Endpoint.from_dict(data) if data else None

    async def list_endpoints(self) -> list[Endpoint]:
        return [Endpoint.from_dict(d) for d in self._all("SELECT data FROM endpoints ORDER BY inference_id")]

    async def delete_endpoint(self, inference_id: str, *, with_deployment: bool) -> None:
        def delete(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT deployment_id FROM endpoints WHERE inference_id=?", (inference_id,)).fetchone()
            if row is None:
                raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
            db.execute("DELETE FROM endpoints WHERE inference_id=?", (inference_id,))
            if with_deployment:
                db.execute("DELETE FROM deployments WHERE deployment_id=?", (row[0],))

        self._tx(delete)

    async def replace_endpoint(self, endpoint: Endpoint) -> None:
        def update(db: sqlite3.Connection) -> None:
            cur = db.execute("UPDATE endpoints SET data=? WHERE inference_id=?",
                             (json.dumps(endpoint.to_dict()), endpoint.inference_id))
            if cur.rowcount == 0:
                raise ResourceNotFound(f"Inference endpoint not found [{endpoint.inference_id}]")

        self._tx(update)

    async def get_deployment(self, deployment_id: str) -> Deployment | None:
        data = self._one("SELECT data FROM deployments WHERE deployment_id=?", deployment_id)
        return Deployment.from_dict(data) if data else None

    async def list_deployments(self) -> list[Deployment]:
        return [Deployment.from_dict(d) for d in self._all("SELECT data FROM deployments ORDER BY deployment_id")]

    async def update_deployment(self, deployment: Deployment) -> None:
        def update(db: sqlite3.Connection) -> None:
            cur = db.execute(
                "UPDATE deployments SET data=? WHERE deployment_id=?",
                (json.dumps(deployment.to_dict()), deployment.deployment_id),
            )
            if cur.rowcount == 0:
                raise ResourceNotFound(f"Could not find deployment [{deployment.deployment_id}]")

        self._tx(update)

    async def delete_deployment(self, deployment_id: str) -> None:
        self._tx(lambda db: db.execute("DELETE FROM deployments WHERE deployment_id=?", (deployment_id,)))
