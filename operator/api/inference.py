"""Elasticsearch's inference API: ``PUT/GET/DELETE/POST _inference/...``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..service import InferenceService
from ..spec import EndpointBody
from ..timevalue import parse_time
from .common import (
    BOOL,
    JSON,
    TIMEOUT,
    GatewaySettings,
    flag,
    json_body,
    json_response,
    query_params,
    read_json,
    run_cancellable,
)

PUT_SCHEMA = EndpointBody.model_json_schema(ref_template="#/components/schemas/{model}")
# The spec models the PUT body refers to; the app factory adds them to the OpenAPI document's components.
PUT_DEFS = PUT_SCHEMA.pop("$defs", {})
_PUT_BODY = {**json_body(PUT_SCHEMA, "The endpoint"), **query_params(TIMEOUT)}
_INFER_BODY = json_body(
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
) | query_params(TIMEOUT, ("chunked", "answer each input's chunks (chunking_settings), with offsets", BOOL))
_DELETE_QUERY = query_params(("force", "delete even if other endpoints use its deployment", BOOL),
                             ("dry_run", "check only", BOOL))
_UPDATE_BODY = json_body({"type": "object", "properties": {
    "service_settings": {"type": "object", "properties": {
        "num_allocations": {"type": "integer", "minimum": 1},
        "adaptive_allocations": {"$ref": "#/components/schemas/AdaptiveAllocations"}}},
    "task_settings": {"$ref": "#/components/schemas/TaskSettings"}}}, "What to change")


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["inference"])

    async def put(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        timeout = parse_time(request.query_params.get("timeout"), settings.put_timeout)
        return json_response(request, await service.put_endpoint(task_type, inference_id, body, timeout))

    async def update(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        return json_response(request, await service.update_endpoint(task_type, inference_id, body))

    # Declared before the PUT routes: /_inference/{id}/_update would otherwise read as {task_type}/{id}.
    @api.put("/_inference/{task_type}/{inference_id}/_update", openapi_extra=_UPDATE_BODY,
             summary="Update an endpoint's allocations or task settings")
    async def update_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await update(request, task_type, inference_id)

    @api.put("/_inference/{inference_id}/_update", openapi_extra=_UPDATE_BODY,
             summary="Update an endpoint's allocations or task settings")
    async def update_untyped(request: Request, inference_id: str) -> Response:
        return await update(request, None, inference_id)

    @api.put("/_inference/{task_type}/{inference_id}", openapi_extra=_PUT_BODY, summary="Create an inference endpoint")
    async def put_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await put(request, task_type, inference_id)

    @api.put("/_inference/{inference_id}", openapi_extra=_PUT_BODY,
             summary="Create an inference endpoint (task type taken from the model)")
    async def put_untyped(request: Request, inference_id: str) -> Response:
        return await put(request, None, inference_id)

    @api.get("/_inference", summary="List inference endpoints")
    async def list_all(request: Request) -> Response:
        return json_response(request, {"endpoints": await service.get_endpoints()})

    @api.get("/_inference/{inference_id}",
             summary="Get an endpoint (or, given a task type, list the endpoints of that type)")
    async def get_one(request: Request, inference_id: str) -> Response:
        if inference_id in ("text_embedding", "sparse_embedding", "rerank"):
            endpoints = await service.get_endpoints(task_type=inference_id)
        else:
            endpoints = await service.get_endpoints(inference_id=inference_id)
        return json_response(request, {"endpoints": endpoints})

    @api.get("/_inference/{task_type}/{inference_id}", summary="Get an inference endpoint")
    async def get_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return json_response(request, {"endpoints": await service.get_endpoints(task_type, inference_id)})

    async def delete(request: Request, task_type: str | None, inference_id: str) -> Response:
        result = await service.delete_endpoint(
            inference_id, task_type, force=flag(request, "force"), dry_run=flag(request, "dry_run")
        )
        return json_response(request, result)

    @api.delete("/_inference/{task_type}/{inference_id}", summary="Delete an inference endpoint",
                openapi_extra=_DELETE_QUERY)
    async def delete_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await delete(request, task_type, inference_id)

    @api.delete("/_inference/{inference_id}", summary="Delete an inference endpoint", openapi_extra=_DELETE_QUERY)
    async def delete_untyped(request: Request, inference_id: str) -> Response:
        return await delete(request, None, inference_id)

    async def infer(request: Request, task_type: str | None, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        timeout = parse_time(request.query_params.get("timeout"), settings.inference_timeout)
        chunked = flag(request, "chunked")
        result = await run_cancellable(request, service.infer(inference_id, task_type, body, timeout, chunked=chunked))
        if result is None:
            return Response(status_code=499)
        status, content, headers = result
        if status == 200 and (flag(request, "pretty") or request.query_params.get("filter_path")):
            return json_response(request, orjson.loads(content), status, headers)
        # The worker's answer goes out as it came: no parsing, no re-serialising.
        return Response(content, status, headers=headers, media_type=JSON)

    @api.post("/_inference/{task_type}/{inference_id}", openapi_extra=_INFER_BODY, summary="Run inference")
    async def infer_typed(request: Request, task_type: str, inference_id: str) -> Response:
        return await infer(request, task_type, inference_id)

    @api.post("/_inference/{inference_id}", openapi_extra=_INFER_BODY, summary="Run inference")
    async def infer_untyped(request: Request, inference_id: str) -> Response:
        return await infer(request, None, inference_id)

    return api

