"""Pure-ASGI layers around every router: the one auth layer, Elasticsearch's headers, request metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..auth import Authenticator
from ..errors import InfernetesError
from .errors import error_response

_COMPAT = re.compile(rb"compatible-with=(\d+)")


class ElasticsearchHeaders:
    """Marks every response as Elasticsearch's and echoes the client's compatible-with media type."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        compat = None
        for key, value in scope["headers"]:
            if key in (b"accept", b"content-type") and (m := _COMPAT.search(value)):
                compat = m.group(1)
                break

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-elastic-product"]
                if compat is not None:
                    headers = [
                        (k, b"application/vnd.elasticsearch+json;compatible-with=" + compat)
                        if k.lower() == b"content-type" and v.startswith(b"application/json")
                        else (k, v)
                        for k, v in headers
                    ]
                headers.append((b"x-elastic-product", b"Elasticsearch"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ApiKeyAuth:
    """The one auth layer: checks the API key (``ApiKey`` or ``Bearer``) and the privilege each request
    needs, before any routing, for every API family alike."""

    def __init__(self, app: Callable[..., Awaitable[None]], auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                scope.setdefault("state", {})["api_key"] = self.auth.check(scope["method"], scope["path"], header)
            except InfernetesError as exc:
                await error_response(None, exc, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "infernetes_gateway_requests", "REST requests by route and status.", ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "infernetes_gateway_request_duration_seconds", "REST request latency by route.", ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.frozen_objects = Gauge(
            "infernetes_gateway_gc_frozen_objects",
            "Objects the garbage collector no longer walks: those alive once the gateway started (gc.freeze).",
            registry=self.registry,
        )


class RequestMetrics:
    """Counts and times every request by route template (low cardinality), as pure ASGI."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.seconds.labels(scope["method"], route).observe(time.perf_counter() - t0)
