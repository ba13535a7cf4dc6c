"""Per-id serialisation (issue 13, D2): changes to one id run one at a time, a change that waits too long
gets 409, and no waiter that gives up or is cancelled leaves a lock taken."""

from __future__ import annotations

import asyncio

import pytest

from infernetes.operator.errors import Conflict
from infernetes.operator.locks import KeyedLocks


async def test_changes_to_one_id_run_one_at_a_time_and_others_run_beside():
    locks = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:  # a change to deployment x in progress when a and b arrive
        async with locks.hold("e/x"):
            order.append("h+")
            await release.wait()

    async def change(name: str, *keys: str) -> None:
        async with locks.hold(*keys):
            order.append(f"{name}+")
            await asyncio.sleep(0.02)
            order.append(f"{name}-")

    h = asyncio.ensure_future(holder())
    await asyncio.sleep(0.01)
    # b queues for e/x first, then a takes d/x and queues for e/x too: taken in the order asked, b would get
    # e/x and wait for d/x, which a holds while waiting for e/x. Sorted, they cannot wait for each other.
    b = asyncio.ensure_future(change("b", "e/x", "d/x"))
    await asyncio.sleep(0.01)
    a = asyncio.ensure_future(change("a", "d/x", "e/x"))
    c = asyncio.ensure_future(change("c", "e/y"))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(h, a, b, c), 10)  # a deadlock fails here instead of hanging
    assert order.index("a-") < order.index("b+") or order.index("b-") < order.index("a+")
    assert order.index("c+") < order.index("h+") + 3  # c, on another id, never waited for them
    assert locks._locks == {}  # nothing is kept for ids nobody uses


async def test_a_waiter_that_times_out_gets_409_and_the_lock_stays_usable():
    locks = KeyedLocks()
    async with locks.hold("d/x"):
        async def late() -> None:
            async with locks.hold("d/x", timeout=0.05, busy="busy here"):
                pass

        with pytest.raises(Conflict, match="busy here"):
            await asyncio.wait_for(late(), 10)
        waiter = asyncio.ensure_future(locks.hold("d/x", timeout=10).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with locks.hold("d/x", timeout=0):  # free again, even with no time to wait
        pass
    assert locks._locks == {}
