"""The Elasticsearch-compatible REST gateway (FastAPI).

A thin HTTP layer over :class:`~infernetes.operator.service.InferenceService`: it reads bodies
(size-capped, JSON only), maps every error to Elasticsearch's error body, adds the
``X-Elastic-Product: Elasticsearch`` header the official clients insist on, answers in the
``compatible-with`` media type a client asked for, and publishes an OpenAPI document that
describes every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from .auth import Authenticator
from .errors import BadRequest, InfernetesError, ParseError, PayloadTooLarge, ValidationFailed, error_body
from .filterpath import filter_path
from .service import InferenceService
from .spec import EndpointBody
from .timevalue import parse_time
from .version import ES_COMPAT_VERSION, __version__

log = logging.getLogger("infernetes.gateway")
JSON = "application/json"
_COMPAT = re.compile(rb"compatible-with=(\d+)")


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 32 * 1024 * 1024
    put_timeout: float = 30.0
    inference_timeout: float = 30.0
    cluster_name: str = "infernetes"
    # API-key authentication; None turns it off (trusted networks, or loopback only).
    auth: Authenticator | None = None


# -- OpenAPI descriptions of bodies the handlers read themselves ------------------------------------


def _query(*params: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI descriptions of query parameters the handlers read themselves (Elasticsearch's names)."""
    return {"parameters": [{"name": n, "in": "query", "required": False, "description": d, "schema": sch}
                           for n, d, sch in params]}


_STR = {"type": "string"}
_BOOL = {"type": "string", "enum": ["true", "false", ""]}
_INT = {"type": "integer"}
_TIMEOUT = ("timeout", "how long to wait, as an Elasticsearch time value (30s, 2m); default 30s", _STR)


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {JSON: {"schema": schema}},
        }
    }


_PUT_SCHEMA = EndpointBody.model_json_schema(ref_template="#/components/schemas/{model}")
_PUT_DEFS = _PUT_SCHEMA.pop("$defs", {})
_PUT_BODY = {**_json_body(_PUT_SCHEMA, "The endpoint"), **_query(_TIMEOUT)}
_INFER_BODY = _json_body(
    {
        "type": "object",
        "properties": {
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "query": {"type": "string", "description": "rerank only"},
            "input_type": {"type": "string", "enum": ["SEARCH", "INGEST", "CLASSIFICATION", "CLUSTERING"]},
            "return_documents": {"type": "boolean", "description": "rerank only"},
            "top_n": {"type": "integer", "minimum": 1, "description": "rerank only"},
            "task_settings": {"type": "object"},
        },
        "required": ["input"],
        "additionalProperties": False,
    },
    "Texts to embed, or a query and documents to rerank",
) | _query(_TIMEOUT, ("chunked", "answer each input's chunks (chunking_settings), with offsets", _BOOL))
_DELETE_QUERY = _query(("force", "delete even if other endpoints use its deployment", _BOOL),
                       ("dry_run", "check only", _BOOL))
_START_QUERY = _query(("deployment_id", "default: the model id", _STR), ("number_of_allocations", "default 1", _INT),
                      ("threads_per_allocation", "a power of 2, at most 32; default 1", _INT),
                      ("queue_capacity", "inputs waiting per allocation before 429", _INT),
                      ("priority", "normal or low", {"type": "string", "enum": ["normal", "low"]}),
                      ("wait_for", "starting, started or fully_allocated",
                       {"type": "string", "enum": ["starting", "started", "fully_allocated"]}), _TIMEOUT)


# -- responses ------------------------------------------------------------------------------------


def json_response(request: Request, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, honouring Elasticsearch's ``pretty`` and ``filter_path`` parameters."""
    data = filter_path(data, request.query_params.get("filter_path"))
    option = orjson.OPT_INDENT_2 if _flag(request, "pretty") else 0
    return Response(orjson.dumps(data, option=option), status, headers=headers, media_type=JSON)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    return value is not None and value.lower() in ("", "true", "1")


def _int_param(request: Request, name: str, body: dict[str, Any] | None = None) -> int | None:
    value: Any = request.query_params.get(name)
    if value is None and body is not None:
        value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationFailed([f"[{name}] must be an integer, got [{value}]"])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationFailed([f"[{name}] must be an integer, got [{value}]"]) from None


def error_response(request: Request | None, exc: InfernetesError) -> Response:
    return Response(orjson.dumps(exc.body()), exc.status, headers=exc.headers, media_type=JSON)


async def read_json(request: Request, max_bytes: int, *, required: bool = True) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body is {declared} bytes; at most {max_bytes} bytes are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise ParseError("request body is required")
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"Failed to parse request body: {exc}") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- middleware ----------------------------------------------------------------------------------


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
    """Checks ``Authorization: ApiKey ...`` and the privilege each request needs, before any routing."""

    def __init__(self, app: Callable[..., Awaitable[None]], auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                scope.setdefault("state", {})["api_key"] = self.auth.check(scope["method"], scope["path"], header)
            except InfernetesError as exc:
                await error_response(None, exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


# -- the app --------------------------------------------------------------------------------------


def create_app(service: InferenceService, settings: GatewaySettings | None = None,
               extra_registries: list[CollectorRegistry] | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    cluster_uuid = uuid.uuid5(uuid.NAMESPACE_DNS, settings.cluster_name).hex[:22]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start = getattr(service.runtime, "start", None)
        if start is not None:
            await start()
        await service.restore()
        yield
        await service.runtime.close()

    app = FastAPI(
        title="Infernetes",
        version=__version__,
        description="Elasticsearch-compatible inference endpoints (the `elasticsearch` inference service).",
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

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the spec models the hand-read request bodies refer to."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(_PUT_DEFS)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.metrics = metrics

    @app.exception_handler(InfernetesError)
    async def _es_error(request: Request, exc: InfernetesError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            reason = f"Incorrect HTTP method for uri [{request.url.path}] and method [{request.method}]"
            return Response(orjson.dumps(error_body(405, "illegal_argument_exception", reason)), 405, media_type=JSON)
        reason = f"no handler found for uri [{request.url.path}] and method [{request.method}]"
        if exc.status_code != 404:
            reason = str(exc.detail)
        return Response(orjson.dumps(error_body(exc.status_code, "illegal_argument_exception", reason)),
                        exc.status_code, media_type=JSON)

    @app.exception_handler(RequestValidationError)
    async def _param_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        reason = f"[{'.'.join(str(p) for p in first['loc'])}] {first['msg']}"
        return Response(orjson.dumps(error_body(400, "illegal_argument_exception", reason)), 400, media_type=JSON)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        reason = f"internal error: {type(exc).__name__}"
        return Response(orjson.dumps(error_body(500, "exception", reason)), 500, media_type=JSON)

    # -- info --------------------------------------------------------------------------------

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

    @app.get("/", tags=["info"], summary="Server info (Elasticsearch-style)")
    async def root(request: Request) -> Response:
        return json_response(request, info())

    @app.head("/", tags=["info"], include_in_schema=False)
    async def ping() -> Response:
        return Response(status_code=200, media_type=JSON)

    @app.get("/_infernetes/health", tags=["info"], summary="Liveness of the gateway (no authentication)")
    async def health() -> Response:
        return Response(b'{"status":"green"}', media_type=JSON)

    @app.get("/metrics", tags=["info"], summary="Prometheus metrics of the gateway")
    async def prometheus() -> Response:
        body = generate_latest(metrics.registry)
        for registry in extra_registries or []:
            body += generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- endpoints ---------------------------------------------------------------------------

    async def put(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        timeout = parse_time(request.query_params.get("timeout"), settings.put_timeout)
        return json_response(request, await service.put_endpoint(task_type, inference_id, body, timeout))

    async def update(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        return json_response(request, await service.update_endpoint(task_type, inference_id, body))

    # Declared before the PUT routes: /_inference/{id}/_update would otherwise read as {task_type}/{id}.
    update_body = _json_body({"type": "object", "properties": {
        "service_settings": {"type": "object", "properties": {
            "num_allocations": {"type": "integer", "minimum": 1},
            "adaptive_allocations": {"$ref": "#/components/schemas/AdaptiveAllocations"}}},
        "task_settings": {"$ref": "#/components/schemas/TaskSettings"}}}, "What to change")

    @app.put("/_inference/{task_type}/{inference_id}/_update", tags=["inference"], openapi_extra=update_body,
             summary="Update an endpoint's allocations or task settings")
    async def update_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await update(request, task_type, inference_id)

    @app.put("/_inference/{inference_id}/_update", tags=["inference"], openapi_extra=update_body,
             summary="Update an endpoint's allocations or task settings")
    async def update_untyped(request: Request, inference_id: str) -> Response:
        return await update(request, None, inference_id)

    @app.put("/_inference/{task_type}/{inference_id}", tags=["inference"], openapi_extra=_PUT_BODY,
             summary="Create an inference endpoint")
    async def put_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await put(request, task_type, inference_id)

    @app.put("/_inference/{inference_id}", tags=["inference"], openapi_extra=_PUT_BODY,
             summary="Create an inference endpoint (task type taken from the model)")
    async def put_untyped(request: Request, inference_id: str) -> Response:
        return await put(request, None, inference_id)

    @app.get("/_inference", tags=["inference"], summary="List inference endpoints")
    async def list_all(request: Request) -> Response:
        return json_response(request, {"endpoints": await service.get_endpoints()})

    @app.get("/_inference/{inference_id}", tags=["inference"],
             summary="Get an endpoint (or, given a task type, list the endpoints of that type)")
    async def get_one(request: Request, inference_id: str) -> Response:
        if inference_id in ("text_embedding", "sparse_embedding", "rerank"):
            endpoints = await service.get_endpoints(task_type=inference_id)
        else:
            endpoints = await service.get_endpoints(inference_id=inference_id)
        return json_response(request, {"endpoints": endpoints})

    @app.get("/_inference/{task_type}/{inference_id}", tags=["inference"], summary="Get an inference endpoint")
    async def get_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return json_response(request, {"endpoints": await service.get_endpoints(task_type, inference_id)})

    async def delete(request: Request, task_type: str | None, inference_id: str) -> Response:
        result = await service.delete_endpoint(
            inference_id, task_type, force=_flag(request, "force"), dry_run=_flag(request, "dry_run")
        )
        return json_response(request, result)

    @app.delete("/_inference/{task_type}/{inference_id}", tags=["inference"], summary="Delete an inference endpoint",
                openapi_extra=_DELETE_QUERY)
    async def delete_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await delete(request, task_type, inference_id)

    @app.delete("/_inference/{inference_id}", tags=["inference"], summary="Delete an inference endpoint",
                openapi_extra=_DELETE_QUERY)
    async def delete_untyped(request: Request, inference_id: str) -> Response:
        return await delete(request, None, inference_id)

    async def infer(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        timeout = parse_time(request.query_params.get("timeout"), settings.inference_timeout)
        chunked = _flag(request, "chunked")
        call = asyncio.ensure_future(service.infer(inference_id, task_type, body, timeout, chunked=chunked))
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
        if not call.done():
            # The client went away: cancelling closes the connection to the worker, which drops the job.
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
            return Response(status_code=499)
        gone.cancel()
        status, content, headers = call.result()
        if status == 200 and (_flag(request, "pretty") or request.query_params.get("filter_path")):
            return json_response(request, orjson.loads(content), status, headers)
        # The worker's answer goes out as it came: no parsing, no re-serialising.
        return Response(content, status, headers=headers, media_type=JSON)

    @app.post("/_inference/{task_type}/{inference_id}", tags=["inference"], openapi_extra=_INFER_BODY,
              summary="Run inference")
    async def infer_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await infer(request, task_type, inference_id)

    @app.post("/_inference/{inference_id}", tags=["inference"], openapi_extra=_INFER_BODY, summary="Run inference")
    async def infer_untyped(request: Request, inference_id: str) -> Response:
        return await infer(request, None, inference_id)

    # -- trained models ----------------------------------------------------------------------

    @app.get("/_ml/trained_models/_stats", tags=["ml"], summary="Stats of all trained models and deployments")
    async def stats_all(request: Request) -> Response:
        return json_response(request, await service.trained_model_stats(None))

    @app.get("/_ml/trained_models/{model_id}/_stats", tags=["ml"], summary="Stats of models or deployments")
    async def stats(request: Request, model_id: str) -> Response:
        return json_response(request, await service.trained_model_stats(model_id))

    @app.get("/_ml/trained_models", tags=["ml"], summary="Configurations of the models in the store")
    async def models_all(request: Request) -> Response:
        return json_response(request, await service.trained_models(None))

    @app.get("/_ml/trained_models/{model_id}", tags=["ml"], summary="Configuration of models")
    async def models_one(request: Request, model_id: str) -> Response:
        return json_response(request, await service.trained_models(model_id))

    @app.post("/_ml/trained_models/{model_id}/deployment/_start", tags=["ml"], openapi_extra=_START_QUERY,
              summary="Start a deployment of a model (deployment_id defaults to the model id)")
    async def start(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        q = request.query_params
        result = await service.start_deployment(
            model_id,
            deployment_id=q.get("deployment_id") or body.get("deployment_id"),
            number_of_allocations=_int_param(request, "number_of_allocations", body),
            threads_per_allocation=_int_param(request, "threads_per_allocation", body) or 1,
            queue_capacity=_int_param(request, "queue_capacity", body),
            priority=q.get("priority") or body.get("priority") or "normal",
            adaptive=body.get("adaptive_allocations"),
            wait_for=q.get("wait_for") or "started",
            timeout=parse_time(q.get("timeout"), settings.put_timeout),
        )
        return json_response(request, result)

    @app.post("/_ml/trained_models/{model_id}/deployment/_stop", tags=["ml"], summary="Stop a deployment",
              openapi_extra=_query(("force", "stop even if endpoints use it (and remove them)", _BOOL)))
    async def stop(request: Request, model_id: str) -> Response:
        return json_response(request, await service.stop_deployment(model_id, force=_flag(request, "force")))

    @app.post("/_ml/trained_models/{model_id}/deployment/_update", tags=["ml"],
              summary="Change a deployment's allocations")
    async def update_deployment(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        dep = await service.update_deployment(
            model_id, number_of_allocations=_int_param(request, "number_of_allocations", body),
            adaptive=body.get("adaptive_allocations"),
        )
        return json_response(request, {"assignment": service.assignment(dep)})

    return app
