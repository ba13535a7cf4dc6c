"""What the router makes of answers that are not the worker's own (issue 13, D7, D12): a plain-text 500
from a worker whose server cut the request off (DELETE or scale-down while a request outlived the drain
timeout) becomes an Elasticsearch-shaped 503, never passed through; a zero timeout fails at once."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from helpers import fake_worker

from infernetes.operator.errors import RequestTimeout, ServiceUnavailable
from infernetes.operator.runtime.router import Router


@pytest_asyncio.fixture
async def serve():
    runners: list[web.AppRunner] = []

    async def start(status: int, body: bytes, content_type: str, delay: float = 0.0) -> str:
        async def infer(request: web.Request) -> web.Response:
            await asyncio.sleep(delay)
            return web.Response(status=status, body=body, content_type=content_type)

        url, runner = await fake_worker(infer)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_plain_text_500_from_a_cut_off_worker_becomes_an_elasticsearch_503(serve):
    url = await serve(500, b"Internal Server Error", "text/plain")
    router = Router()
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await router.forward([url], b"{}", 5, what="deployment [d]")
        body = info.value.body()
        assert body["status"] == 503 and body["error"]["type"] == "status_exception"
        assert "stopped before it answered" in body["error"]["reason"] and "deployment [d]" in body["error"]["reason"]
    finally:
        await router.close()


async def test_the_workers_own_errors_pass_through_and_foreign_4xx_get_the_shape(serve):
    own = orjson.dumps({"error": {"root_cause": [], "type": "status_exception", "reason": "bad"}, "status": 500})
    router = Router()
    try:
        url = await serve(500, own, "application/json")
        assert await router.forward([url], b"{}", 5) == (500, own, {})
        url = await serve(404, b"Not Found", "text/plain")
        status, content, _ = await router.forward([url], b"{}", 5)
        body = orjson.loads(content)
        assert status == 404 and body["status"] == 404 and body["error"]["reason"] == "Not Found"
    finally:
        await router.close()


async def test_a_zero_timeout_is_already_over(serve):
    url = await serve(200, b'{"ok":true}', "application/json", delay=0.2)
    router = Router()
    try:
        with pytest.raises(RequestTimeout):
            await router.forward([url], b"{}", 0)
    finally:
        await router.close()
