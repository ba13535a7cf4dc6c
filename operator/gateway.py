"""The Elasticsearch-compatible REST gateway (FastAPI).

A thin HTTP layer over :class:`~infernetes.operator.service.InferenceService`. The app factory and
the routers live in :mod:`infernetes.operator.api` (one module per API family); this module keeps
the names the CLI, the cluster gateway and the tests import.
"""

from __future__ import annotations

from .api.app import create_app
from .api.common import GatewaySettings, json_response, read_json
from .api.errors import error_response
from .api.middleware import ApiKeyAuth, ElasticsearchHeaders, GatewayMetrics, RequestMetrics

__all__ = [
    "ApiKeyAuth",
    "ElasticsearchHeaders",
    "GatewayMetrics",
    "GatewaySettings",
    "RequestMetrics",
    "create_app",
    "error_response",
    "json_response",
    "read_json",
]
