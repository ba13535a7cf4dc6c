"""Cohere-style rerank: ``POST /v1/rerank`` (Cohere v1, Jina) and ``POST /v2/rerank`` (Cohere v2), in Cohere's
shape ``{"id", "results": [{"index", "relevance_score", "document"?: {"text"}}], "meta"}``.

``model`` names a ``rerank`` inference endpoint; scoring runs through the same
:meth:`InferenceService.infer` as ``POST _inference/rerank/{id}``.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ValidationFailed
from ..service import InferenceService
from ..timevalue import parse_time
from . import protocol
from .common import GatewaySettings, json_body, plain_json

_FIELDS = {"model", "query", "documents", "top_n", "return_documents", "max_tokens_per_doc"}
_RERANK_BODY = json_body({
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "the inference id of a rerank endpoint"},
        "query": {"type": "string"},
        "documents": {"type": "array", "items": {"oneOf": [
            {"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}}]}},
        "top_n": {"type": "integer", "minimum": 1},
        "return_documents": {"type": "boolean", "default": False},
        "max_tokens_per_doc": {"type": "integer", "description": "accepted; documents are cut at the model's "
                                                                 "maximum sequence length"},
    },
    "required": ["model", "query", "documents"],
    "additionalProperties": False,
}, "Cohere's rerank request")


def documents_of(value: Any) -> list[str]:
    """Cohere's documents: strings, or (v1) objects with a ``text`` field."""
    if isinstance(value, list) and value:
        texts = [d.get("text") if isinstance(d, dict) else d for d in value]
        if all(isinstance(t, str) for t in texts):
            return texts  # type: ignore[return-value]
    raise ValidationFailed(["[documents] must be a non-empty array of strings (or of objects with a [text] string)"])


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["cohere"])

    async def rerank(request: Request, version: str) -> Response:
        body, model = await protocol.read_request(request, settings.max_body_bytes, _FIELDS, "unknown fields [{}]",
                                                  "rerank")
        docs = documents_of(body.get("documents"))
        mtpd = body.get("max_tokens_per_doc")
        if mtpd is not None and (not isinstance(mtpd, int) or isinstance(mtpd, bool) or mtpd < 1):
            raise ValidationFailed(["[max_tokens_per_doc] must be a positive integer"])
        request_body: dict[str, Any] = {"input": docs, "query": body.get("query"), "return_documents": False}
        if body.get("top_n") is not None:
            request_body["top_n"] = body["top_n"]
        return_documents = body.get("return_documents", False)
        if not isinstance(return_documents, bool):
            raise ValidationFailed(["[return_documents] must be a boolean"])
        timeout = parse_time(request.query_params.get("timeout"), settings.inference_timeout)
        result, tokens = await protocol.infer(service, request, model, "rerank", request_body, timeout)
        results = []
        for item in result["rerank"]:
            entry: dict[str, Any] = {"index": item["index"], "relevance_score": item["relevance_score"]}
            if return_documents:
                entry["document"] = {"text": docs[item["index"]]}
            results.append(entry)
        meta: dict[str, Any] = {"api_version": {"version": version}, "billed_units": {"search_units": 1}}
        if tokens is not None:
            meta["tokens"] = {"input_tokens": tokens}
        return plain_json({"id": str(uuid.uuid4()), "results": results, "meta": meta})

    @api.post("/v1/rerank", openapi_extra=_RERANK_BODY, summary="Rerank documents (Cohere v1 / Jina style)")
    async def rerank_v1(request: Request) -> Response:
        return await rerank(request, "1")

    @api.post("/v2/rerank", openapi_extra=_RERANK_BODY, summary="Rerank documents (Cohere v2)")
    async def rerank_v2(request: Request) -> Response:
        return await rerank(request, "2")

    return api
