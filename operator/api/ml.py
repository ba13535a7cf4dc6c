"""Elasticsearch's trained-model APIs: ``_ml/trained_models`` configurations, stats and deployments."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest
from ..service import InferenceService
from ..timevalue import parse_time
from .common import BOOL, INT, STR, TIMEOUT, GatewaySettings, flag, int_param, json_response, query_params, read_json

_START_QUERY = query_params(("deployment_id", "default: the model id", STR), ("number_of_allocations", "default 1", INT),
                            ("threads_per_allocation", "a power of 2, at most 32; default 1", INT),
                            ("queue_capacity", "inputs waiting per allocation before 429", INT),
                            ("priority", "normal or low", {"type": "string", "enum": ["normal", "low"]}),
                            ("wait_for", "starting, started or fully_allocated",
                             {"type": "string", "enum": ["starting", "started", "fully_allocated"]}), TIMEOUT)


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["ml"])

    @api.get("/_ml/trained_models/_stats", summary="Stats of all trained models and deployments")
    async def stats_all(request: Request) -> Response:
        return json_response(request, await service.trained_model_stats(None))

    @api.get("/_ml/trained_models/{model_id}/_stats", summary="Stats of models or deployments")
    async def stats(request: Request, model_id: str) -> Response:
        return json_response(request, await service.trained_model_stats(model_id))

    @api.get("/_ml/trained_models", summary="Configurations of the models in the store")
    async def models_all(request: Request) -> Response:
        return json_response(request, await service.trained_models(None))

    @api.get("/_ml/trained_models/{model_id}", summary="Configuration of models")
    async def models_one(request: Request, model_id: str) -> Response:
        return json_response(request, await service.trained_models(model_id))

    @api.post("/_ml/trained_models/{model_id}/deployment/_start", openapi_extra=_START_QUERY,
              summary="Start a deployment of a model (deployment_id defaults to the model id)")
    async def start(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        q = request.query_params
        result = await service.start_deployment(
            model_id,
            deployment_id=q.get("deployment_id") or body.get("deployment_id"),
            number_of_allocations=int_param(request, "number_of_allocations", body),
            threads_per_allocation=int_param(request, "threads_per_allocation", body) or 1,
            queue_capacity=int_param(request, "queue_capacity", body),
            priority=q.get("priority") or body.get("priority") or "normal",
            adaptive=body.get("adaptive_allocations"),
            wait_for=q.get("wait_for") or "started",
            timeout=parse_time(q.get("timeout"), settings.put_timeout),
        )
        return json_response(request, result)

    @api.post("/_ml/trained_models/{model_id}/deployment/_stop", summary="Stop a deployment",
              openapi_extra=query_params(("force", "stop even if endpoints use it (and remove them)", BOOL)))
    async def stop(request: Request, model_id: str) -> Response:
        return json_response(request, await service.stop_deployment(model_id, force=flag(request, "force")))

    @api.post("/_ml/trained_models/{model_id}/deployment/_update", summary="Change a deployment's allocations")
    async def update_deployment(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes, required=False) or {}
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        dep = await service.update_deployment(
            model_id, number_of_allocations=int_param(request, "number_of_allocations", body),
            adaptive=body.get("adaptive_allocations"),
        )
        return json_response(request, {"assignment": service.assignment(dep)})

    return api
