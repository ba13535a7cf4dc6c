"""The SQLite store never holds up the event loop (issue 13, D1): a write waiting for the disk (here: for
the connection, held by another thread as a slow fsync would hold it) leaves the loop serving."""

from __future__ import annotations

import asyncio
import threading

from infernetes.operator.records import Deployment
from infernetes.operator.store import SqliteStore


async def test_a_slow_write_does_not_block_the_event_loop(tmp_path):
    store = SqliteStore(tmp_path / "infernetes.db")
    held = threading.Event()
    release = threading.Event()

    def hold_the_connection() -> None:
        with store._lock:  # what a write waiting for the disk (synchronous=FULL) looks like to others
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_connection)
    holder.start()
    try:
        assert held.wait(10)
        dep = Deployment(deployment_id="d", model_id="m", task_type="text_embedding", num_threads=1)
        write = asyncio.ensure_future(store.create(None, dep))
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not write.done()
        release.set()
        await asyncio.wait_for(write, 10)
        assert [d.deployment_id for d in await store.list_deployments()] == ["d"]
    finally:
        release.set()
        holder.join(10)
        store.close()
