"""Forwarding to allocations: a worker that is not serving is skipped while another one can answer."""

from __future__ import annotations

import pytest
from aiohttp import web
from helpers import fake_worker

from infernetes.operator.errors import ServiceUnavailable
from infernetes.operator.runtime.router import Router


async def worker(runners, status: int, body: bytes) -> tuple[str, list[int]]:
    calls: list[int] = []

    async def infer(request: web.Request) -> web.Response:
        calls.append(1)
        return web.Response(status=status, body=body, headers={"Retry-After": "1"} if status == 503 else {})

    url, runner = await fake_worker(infer)
    runners.append(runner)
    return url, calls


@pytest.fixture
async def runners():
    started: list[web.AppRunner] = []
    yield started
    for runner in started:
        await runner.cleanup()


async def test_a_loading_worker_is_skipped_for_a_serving_one(runners):
    loading, loading_calls = await worker(runners, 503, b'{"error":"loading"}')
    serving, serving_calls = await worker(runners, 200, b'{"ok":true}')
    router = Router()
    try:
        for _ in range(4):  # whichever the router picks first, the answer comes from the serving one
            assert await router.forward([loading, serving], b"{}", 5) == (200, b'{"ok":true}', {})
        assert len(serving_calls) == 4 and len(loading_calls) >= 1
    finally:
        await router.close()


async def test_a_503_is_passed_on_when_no_other_allocation_exists(runners):
    loading, _ = await worker(runners, 503, b'{"error":"loading"}')
    router = Router()
    try:
        assert await router.forward([loading], b"{}", 5) == (503, b'{"error":"loading"}', {"Retry-After": "1"})
    finally:
        await router.close()


async def test_a_dead_worker_is_retried_elsewhere_and_reported(runners):
    serving, _ = await worker(runners, 200, b"{}")
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    failed: list[str] = []
    router = Router()
    try:
        for _ in range(2):
            assert (await router.forward([dead, serving], b"{}", 5, on_failure=failed.append))[0] == 200
        assert set(failed) <= {dead}
        with pytest.raises(ServiceUnavailable):
            await router.forward([dead], b"{}", 5)
    finally:
        await router.close()
