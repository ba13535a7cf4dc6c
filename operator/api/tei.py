"""Hugging Face text-embeddings-inference (TEI) routes, one set per endpoint under ``/tei/{inference_id}``:
``POST /embed``, ``/embed_sparse``, ``/rerank``, ``/tokenize``, ``GET /info``, ``/health``, and ``POST /``
(the root, which answers by the endpoint's task in the shape Elasticsearch's ``hugging_face`` service and
``huggingface_hub.InferenceClient`` read). Every call runs through the same
:meth:`InferenceService.infer` as ``_inference``. Errors are TEI-shaped (``{"error", "error_type"}``).

Differences from TEI, on purpose: ``truncate`` defaults to true (as TEI started with ``--auto-truncate``,
what Elasticsearch's ingest needs); ``normalize: false`` cannot undo a model whose own pipeline
normalises; ``raw_scores: true`` is refused (workers return activated scores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ..errors import BadRequest, ValidationFailed
from ..service import InferenceService
from ..timevalue import parse_time
from ..version import __version__
from . import protocol
from .common import GatewaySettings, plain_json, read_json

PREFIX = "/tei/{inference_id}"


def _inputs(body: dict[str, Any], name: str = "inputs") -> list[str]:
    value = body.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return value
    raise ValidationFailed([f"[{name}] must be a string or a non-empty array of strings"])


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationFailed([f"[{name}] must be a boolean"])
    return value


def _check(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown fields [{', '.join(unknown)}]")
    return body


def _truncation(body: dict[str, Any]) -> bool:
    direction = body.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise BadRequest("[truncation_direction] [Left] is not supported: inputs are truncated on the right")
    return _bool(body, "truncate", True)


def _refuse_truncated(items: list[dict[str, Any]], truncate: bool) -> None:
    """TEI's ``truncate: false``: an input longer than the model's maximum sequence length is an error."""
    if not truncate:
        cut = [i for i, item in enumerate(items) if item.get("is_truncated")]
        if cut:
            raise ValidationFailed([f"[inputs] entry [{cut[0]}] is longer than the model's maximum sequence "
                                    "length; send [truncate: true] to cut it"])


def router(service: InferenceService, settings: GatewaySettings) -> APIRouter:
    api = APIRouter(tags=["tei"])

    def timeout_of(request: Request) -> float:
        return parse_time(request.query_params.get("timeout"), settings.inference_timeout)

    async def embed_vectors(request: Request, inference_id: str, body: dict[str, Any]) -> np.ndarray:
        texts = _inputs(body)
        truncate = _truncation(body)
        normalize = _bool(body, "normalize", True)
        timeout = timeout_of(request)
        dimensions = None
        if body.get("dimensions") is not None:
            ep = await service.endpoint(inference_id)
            info = await protocol.model_info(service, ep, timeout)
            dimensions = protocol.check_dimensions(body["dimensions"], info, inference_id)
        req: dict[str, Any] = {"input": texts}
        input_type = protocol.input_type_of_prompt(body.get("prompt_name"))
        if input_type is not None:
            req["input_type"] = input_type
        result, _ = await protocol.infer(service, request, inference_id, "text_embedding", req, timeout)
        _refuse_truncated(result["text_embedding"], truncate)
        vectors = protocol.vectors_of(result)
        if dimensions is not None:
            return protocol.truncate(vectors, dimensions)
        return protocol.normalize(vectors) if normalize else vectors

    async def sparse(request: Request, inference_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        texts = _inputs(body)
        truncate = _truncation(body)
        req: dict[str, Any] = {"input": texts}
        input_type = protocol.input_type_of_prompt(body.get("prompt_name"))
        if input_type is not None:
            req["input_type"] = input_type
        result, _ = await protocol.infer(service, request, inference_id, "sparse_embedding", req, timeout_of(request))
        items = result["sparse_embedding"]
        _refuse_truncated(items, truncate)
        return [item["embedding"] for item in items]

    async def rerank(request: Request, inference_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        # TEI's names (texts, return_text), and the ones Elasticsearch's hugging_face service sends
        # (documents, return_documents, top_n).
        texts = _inputs(body, "texts" if "texts" in body else "documents")
        if _bool(body, "raw_scores", False):
            raise BadRequest("[raw_scores] is not supported: the scores are the model's activated scores")
        if body.get("max_chunks_per_doc") is not None:
            raise BadRequest("[max_chunks_per_doc] is not supported: documents are truncated, not chunked")
        return_text = _bool(body, "return_text", False) or _bool(body, "return_documents", False)
        _truncation(body)
        req: dict[str, Any] = {"input": texts, "query": body.get("query"), "return_documents": False}
        if body.get("top_n") is not None:
            req["top_n"] = body["top_n"]
        result, _ = await protocol.infer(service, request, inference_id, "rerank", req, timeout_of(request))
        out = []
        for item in result["rerank"]:
            entry: dict[str, Any] = {"index": item["index"], "score": item["relevance_score"]}
            if return_text:
                entry["text"] = texts[item["index"]]
            out.append(entry)
        return out

    _EMBED = {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"}
    _SPARSE = {"inputs", "truncate", "truncation_direction", "prompt_name"}
    _RERANK = {"query", "texts", "documents", "raw_scores", "return_text", "return_documents", "top_n", "truncate",
               "truncation_direction", "max_chunks_per_doc"}

    @api.post(PREFIX + "/embed", summary="TEI: dense embeddings, [[float]]")
    async def embed(request: Request, inference_id: str) -> Response:
        body = _check(await read_json(request, settings.max_body_bytes), _EMBED)
        return plain_json(await embed_vectors(request, inference_id, body))

    @api.post(PREFIX + "/embed_sparse", summary="TEI: sparse embeddings, [[{index, value}]]")
    async def embed_sparse(request: Request, inference_id: str) -> Response:
        body = _check(await read_json(request, settings.max_body_bytes), _SPARSE)
        weights = await sparse(request, inference_id, body)
        ep = await service.endpoint(inference_id)
        vocabulary = sorted({token for w in weights for token in w})
        ids = dict(zip(vocabulary, (await protocol.worker_json(
            service, ep, "/token_ids", {"tokens": vocabulary}, timeout_of(request)))["ids"]))
        return plain_json([sorted(({"index": ids[t], "value": v} for t, v in w.items() if ids[t] is not None),
                                  key=lambda e: e["index"]) for w in weights])

    @api.post(PREFIX + "/rerank", summary="TEI: rerank, [{index, score, text?}] by score")
    async def rerank_route(request: Request, inference_id: str) -> Response:
        body = _check(await read_json(request, settings.max_body_bytes), _RERANK)
        return plain_json(await rerank(request, inference_id, body))

    @api.post(PREFIX + "/tokenize", summary="TEI: the model's tokens, [[{id, text, special, start, stop}]]")
    async def tokenize(request: Request, inference_id: str) -> Response:
        body = _check(await read_json(request, settings.max_body_bytes), {"inputs", "add_special_tokens",
                                                                          "prompt_name"})
        data: dict[str, Any] = {"input": _inputs(body), "add_special_tokens": _bool(body, "add_special_tokens", True)}
        input_type = protocol.input_type_of_prompt(body.get("prompt_name"))
        if input_type is not None:
            data["input_type"] = input_type
        ep = await service.endpoint(inference_id)
        return plain_json((await protocol.worker_json(service, ep, "/tokenize", data, timeout_of(request)))["tokens"])

    @api.post(PREFIX, summary="TEI / Hugging Face root: answers by the endpoint's task")
    @api.post(PREFIX + "/", include_in_schema=False)
    async def root(request: Request, inference_id: str) -> Response:
        body = await read_json(request, settings.max_body_bytes)
        ep = await service.endpoint(inference_id)
        if ep.task_type == "text_embedding":
            return plain_json(await embed_vectors(request, inference_id, _check(body, _EMBED)))
        if ep.task_type == "sparse_embedding":
            # What Elasticsearch's hugging_face (ELSER) service reads: one {token: weight} object per input.
            return plain_json(await sparse(request, inference_id, _check(body, _SPARSE)))
        return plain_json(await rerank(request, inference_id, _check(body, _RERANK)))

    @api.get(PREFIX + "/info", summary="TEI: model information")
    async def info(request: Request, inference_id: str) -> Response:
        ep = await service.endpoint(inference_id)
        model = await protocol.model_info(service, ep, timeout_of(request))
        dep = await service.store.get_deployment(ep.deployment_id)
        if ep.task_type == "rerank":
            model_type: dict[str, Any] = {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
        elif ep.task_type == "sparse_embedding":
            model_type = {"embedding": {"pooling": "splade"}}
        else:
            model_type = {"embedding": {"pooling": (model.get("options") or {}).get("pooling", "mean")}}
        return plain_json({
            "model_id": model.get("model_id"),
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": model_type,
            "max_concurrent_requests": dep.queue_capacity if dep else None,
            "max_input_length": model.get("max_seq_length"),
            "max_batch_tokens": None,
            "max_batch_requests": None,
            "max_client_batch_size": service.limits.max_inputs,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            # Not in TEI: what Infernetes knows besides.
            "inference_id": inference_id,
            "task_type": ep.task_type,
            "dimensions": model.get("dimensions"),
        })

    @api.get(PREFIX + "/health", summary="TEI: 200 when an allocation can answer, else 503")
    async def health(inference_id: str) -> Response:
        ep = await service.endpoint(inference_id)
        status = service.runtime.status(ep.deployment_id)
        if status is None or status.ready < 1:
            return plain_json({"error": f"no allocation of [{inference_id}] is ready", "error_type": "Unhealthy"},
                              503)
        return Response(status_code=200)

    return api
