"""Per-id serialisation: one asyncio lock per endpoint or deployment id, held while a change is made.

Changes to one id (PUT, DELETE, ``_update``, ``_start``, ``_stop``, a restore, a scale) then happen one
after another, whatever order requests arrive in; changes to different ids still run side by side.
Several ids are always taken in sorted order, so two changes can never wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from .errors import Conflict


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    def locked(self, key: str) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def hold(self, *keys: str, timeout: float | None = None, busy: str = "") -> AsyncIterator[None]:
        """Hold the locks of ``keys``; if they are not all free within ``timeout``, raise 409 with ``busy``."""
        ordered = sorted(set(keys))
        deadline = None if timeout is None else asyncio.get_running_loop().time() + max(0.0, timeout)
        for key in ordered:
            self._users[key] += 1
        held: list[asyncio.Lock] = []
        try:
            for key in ordered:
                lock = self._locks.setdefault(key, asyncio.Lock())
                if deadline is None or not lock.locked():
                    await lock.acquire()
                else:
                    await _acquire(lock, deadline - asyncio.get_running_loop().time(), busy or f"[{key}] is busy")
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
            for key in ordered:
                self._users[key] -= 1
                if self._users[key] <= 0:  # nobody holds or waits: forget it (ids come and go)
                    del self._users[key]
                    self._locks.pop(key, None)


async def _acquire(lock: asyncio.Lock, timeout: float, busy: str) -> None:
    """``lock.acquire()`` bounded by ``timeout`` (409 after it), never leaving the lock taken by nobody."""
    task = asyncio.ensure_future(lock.acquire())
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
    except BaseException:
        done = set()
        raise
    finally:
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not task.cancelled() and task.exception() is None:
                lock.release()  # it was acquired just as we gave up
    if not done:
        raise Conflict(busy)
