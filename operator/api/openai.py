"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``.

``model`` names an inference endpoint (a ``text_embedding`` one for embeddings); the texts go through
the same :meth:`InferenceService.infer` as ``POST _inference/text_embedding/{id}``, so the vectors are
the same numbers. Errors on these routes are OpenAI-shaped (see :mod:`.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest, ResourceNotFound, ValidationFailed
from ..records import Endpoint
from ..service import InferenceService
from ..timevalue import parse_time
from . import protocol
from .common import GatewaySettings, json_body, plain_json

ENCODINGS = ("float", "base64")
_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_EMBEDDINGS_BODY = json_body({
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "the inference id of a text_embedding endpoint"},
        "input": {"oneOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
        "encoding_format": {"type": "string", "enum": list(ENCODINGS), "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1,
                       "description": "Matryoshka truncation; only for models whose metadata lists the size"},
        "user": {"type": "string"},
    },
    "required": ["model", "input"],
    "additionalProperties": False,
}, "OpenAI's embeddings request")


def parse_input(value: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    """OpenAI's ``input``: a string, strings, one array of token ids, or arrays of token ids."""
    def ints(xs: Any) -> bool:
        return isinstance(xs, list) and bool(xs) and all(isinstance(t, int) and not isinstance(t, bool) for t in xs)

    if isinstance(value, str):
        return [value], None
    if isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            return value, None
        if ints(value):
            return None, [value]
        if all(ints(x) for x in value):
            return None, value
    raise ValidationFailed(["[input] must be a string, an array of strings, an array of token ids or an array "
                            "of arrays of token ids, and must not be empty"])


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["openai"])

    @api.post("/v1/embeddings", openapi_extra=_EMBEDDINGS_BODY, summary="Create embeddings (OpenAI)")
    async def embeddings(request: Request) -> Response:
        body, model = await protocol.read_request(request, settings.max_body_bytes, _FIELDS,
                                                  "Unrecognized request argument supplied: {}", "text_embedding")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ENCODINGS:
            raise ValidationFailed([f"[encoding_format] must be one of {list(ENCODINGS)}, got [{encoding}]"])
        if body.get("user") is not None and not isinstance(body["user"], str):
            raise ValidationFailed(["[user] must be a string"])
        texts, ids = parse_input(body.get("input"))
        timeout = parse_time(request.query_params.get("timeout"), settings.inference_timeout)
        dimensions = None
        if body.get("dimensions") is not None or ids is not None:
            ep = await service.endpoint(model)
            if ep.task_type != "text_embedding":
                raise BadRequest(f"[{model}] is a [{ep.task_type}] endpoint; /v1/embeddings needs a "
                                 "[text_embedding] endpoint")
            if body.get("dimensions") is not None:
                dimensions = protocol.check_dimensions(body["dimensions"], await protocol.model_info(
                    service, ep, timeout), model)
            if ids is not None:
                texts = await protocol.texts_of_token_ids(service, ep, ids, timeout)
        result, tokens = await protocol.infer(service, request, model, "text_embedding", {"input": texts}, timeout)
        vectors: Any
        if dimensions is None and encoding == "float":
            # The worker's numbers as they came (parsed and written back, they keep every digit).
            vectors = [e["embedding"] for e in result["text_embedding"]]
        else:
            vectors = protocol.vectors_of(result)
            if dimensions is not None:
                vectors = protocol.truncate(vectors, dimensions)
        if encoding == "base64":
            data = [{"object": "embedding", "index": i, "embedding": protocol.b64(v)} for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        used = tokens if tokens is not None else 0
        return plain_json({"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": used, "total_tokens": used}})

    def model_entry(ep: Endpoint) -> dict[str, Any]:
        return {"id": ep.inference_id, "object": "model", "created": int(ep.created), "owned_by": "infernetes",
                "task_type": ep.task_type}

    @api.get("/v1/models", summary="List the inference endpoints as OpenAI models")
    async def models() -> Response:
        endpoints = sorted(await service.store.list_endpoints(), key=lambda ep: ep.inference_id)
        return plain_json({"object": "list", "data": [model_entry(ep) for ep in endpoints]})

    @api.get("/v1/models/{model}", summary="One inference endpoint as an OpenAI model")
    async def model(model: str) -> Response:
        ep = await service.store.get_endpoint(model)
        if ep is None:
            raise ResourceNotFound(f"Inference endpoint not found [{model}]")
        return plain_json(model_entry(ep))

    return api
