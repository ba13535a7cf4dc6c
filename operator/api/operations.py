"""Operations: the Elasticsearch-style info document, liveness and Prometheus metrics."""

from __future__ import annotations

import socket
import uuid
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from ..version import ES_COMPAT_VERSION, __version__
from .common import JSON, GatewaySettings, json_response
from .middleware import GatewayMetrics


def router(settings: GatewaySettings, metrics: GatewayMetrics,
           extra_registries: list[CollectorRegistry] | None = None) -> APIRouter:
    api = APIRouter(tags=["info"])
    cluster_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, settings.cluster_name).hex[:22]

    def info() -> dict[str, Any]:
        return {
            "name": socket.gethostname(),
            "cluster_name": settings.cluster_name,
            "cluster_uuid": cluster_uuid,
            "version": {
                "number": ES_COMPAT_VERSION,
                "build_flavor": "default",
                "build_type": "infernetes",
                "build_hash": "infernetes-" + __version__,
                "build_snapshot": False,
                "lucene_version": "n/a",
                "minimum_wire_compatibility_version": "8.0.0",
                "minimum_index_compatibility_version": "8.0.0",
            },
            "infernetes": {"version": __version__},
            "tagline": "You Know, for Search",
        }

    @api.get("/", summary="Server info (Elasticsearch-style)")
    async def root(request: Request) -> Response:
        return json_response(request, info())

    @api.head("/", include_in_schema=False)
    async def ping() -> Response:
        return Response(status_code=200, media_type=JSON)

    @api.get("/_infernetes/health", summary="Liveness of the gateway (no authentication)")
    async def health() -> Response:
        return Response(b'{"status":"green"}', media_type=JSON)

    @api.get("/metrics", summary="Prometheus metrics of the gateway")
    async def prometheus() -> Response:
        body = generate_latest(metrics.registry)
        for registry in extra_registries or []:
            body += generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return api
