"""The gateway's app factory: one FastAPI app, one router per API family, one error and auth layer.

Routers: :mod:`.operations` (info, health, metrics), :mod:`.inference` (Elasticsearch ``_inference``),
:mod:`.ml` (``_ml/trained_models``), :mod:`.openai` (``/v1/embeddings``, ``/v1/models``),
:mod:`.cohere` (``/v1/rerank``), :mod:`.tei` (``/tei/{inference_id}/...``). Errors map once
(:mod:`.errors`), in the shape of the protocol a path belongs to; API keys are checked once
(:class:`.middleware.ApiKeyAuth`) before routing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from ..service import InferenceService
from ..version import __version__
from . import cohere, errors, inference, ml, openai, operations, tei, trained_models
from .common import GatewaySettings
from .middleware import ApiKeyAuth, ElasticsearchHeaders, GatewayMetrics, RequestMetrics


def create_app(service: InferenceService, settings: GatewaySettings | None = None,
               extra_registries: list[CollectorRegistry] | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start = getattr(service.runtime, "start", None)
        if start is not None:
            await start()
        await service.restore()
        # Everything alive now stays for the process's life: FastAPI, pydantic and the clients, ~65,000 objects
        # (~485,000 in `infernetes serve --demo`, which has imported the model libraries too). A full garbage
        # collection walked the 65,000 in 55-85 ms under load, stalling every request in flight (issue 16,
        # measured with gc.callbacks). Frozen, the collector walks only what requests allocate. Not the worker's
        # freeze_heap: importing worker.app would load numpy and the batcher into the gateway (0.4 s).
        gc.collect()
        gc.freeze()
        metrics.frozen_objects.set(gc.get_freeze_count())
        yield
        await service.runtime.close()

    app = FastAPI(
        title="Infernetes",
        version=__version__,
        description="Elasticsearch-compatible inference endpoints (the `elasticsearch` inference service), "
                    "also spoken as OpenAI embeddings, TEI and Cohere-style rerank.",
        lifespan=lifespan,
        docs_url="/_docs",
        redoc_url=None,
        openapi_url="/_openapi.json",
    )
    # Outermost last: every answer (auth errors included) carries the Elasticsearch headers.
    if settings.auth is not None:
        app.add_middleware(ApiKeyAuth, auth=settings.auth)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(ElasticsearchHeaders)
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the spec models the hand-read request bodies refer to."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(inference.PUT_DEFS)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    errors.install(app)

    app.include_router(operations.router(settings, metrics, extra_registries))
    app.include_router(trained_models.router(service, settings))
    app.include_router(inference.router(service, settings))
    app.include_router(ml.router(service, settings))
    app.include_router(openai.router(service, settings))
    app.include_router(cohere.router(service, settings))
    app.include_router(tei.router(service, settings))
    return app
