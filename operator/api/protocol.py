"""What the OpenAI, TEI and Cohere routers share: calling the same InferenceService as ``_inference``
(so every protocol gives the same numbers), the worker's tokenizer, model metadata, and the pure
post-processing some protocols ask for (Matryoshka truncation, normalisation, base64)."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request

from ...worker.modelstore import PROMPT_NAMES
from ..errors import BadRequest, InfernetesError, ValidationFailed
from ..records import Endpoint
from ..service import InferenceService
from .common import read_json, run_cancellable

TOKENS_HEADER = "X-Infernetes-Prompt-Tokens"
# Model metadata (the worker's manifest) is read once per deployment and kept this long.
INFO_SECONDS = 10.0
# Where a model's manifest says which output sizes it was trained for (sentence-transformers' MatryoshkaLoss
# dims); set with `infernetes models import --matryoshka-dimensions 256,128,64`.
MATRYOSHKA = "matryoshka_dimensions"


async def read_request(request: Request, max_bytes: int, fields: frozenset[str] | set[str], unknown: str,
                       task: str) -> tuple[dict[str, Any], str]:
    """The shared prelude of the protocol bodies: a JSON object with only known fields and a ``model``
    naming an inference endpoint. ``unknown`` is the protocol's own wording, ``{}`` the field list."""
    body = await read_json(request, max_bytes)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    extra = sorted(set(body) - set(fields))
    if extra:
        raise BadRequest(unknown.format(", ".join(extra)))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationFailed([f"[model] is required: the inference id of a {task} endpoint"])
    return body, model


class UpstreamError(InfernetesError):
    """An error a worker answered (Elasticsearch-shaped), carried to the one error mapping unchanged."""

    def __init__(self, status: int, error_type: str, reason: str, headers: dict[str, str]) -> None:
        super().__init__(reason, headers=headers)
        self.status = status  # type: ignore[misc]
        self.error_type = error_type  # type: ignore[misc]


class ClientClosed(InfernetesError):
    """The client went away before the answer: nobody reads this (nginx's 499)."""

    status = 499
    error_type = "client_closed_request"


def raise_for_status(status: int, content: bytes, headers: dict[str, str]) -> None:
    if status == 200:
        return
    try:
        err = orjson.loads(content)["error"]
        error_type, reason = str(err["type"]), str(err["reason"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error_type, reason = "status_exception", content.decode("utf-8", "replace") or f"status {status}"
    raise UpstreamError(status, error_type, reason, headers)


async def infer(service: InferenceService, request: Request, inference_id: str, task_type: str | None,
                body: dict[str, Any], timeout: float) -> tuple[dict[str, Any], int | None]:
    """The ``_inference`` call itself: its parsed answer, and the tokens the model read (when the worker says)."""
    result = await run_cancellable(request, service.infer(inference_id, task_type, body, timeout))
    if result is None:
        raise ClientClosed("the client closed the connection")
    status, content, headers = result
    raise_for_status(status, content, headers)
    tokens = headers.get(TOKENS_HEADER)
    return orjson.loads(content), int(tokens) if tokens and tokens.isascii() and tokens.isdigit() else None


async def worker_json(service: InferenceService, ep: Endpoint, path: str, data: dict[str, Any],
                      timeout: float) -> dict[str, Any]:
    status, content, headers = await service.worker_call(ep, path, orjson.dumps(data), timeout)
    raise_for_status(status, content, headers)
    return orjson.loads(content)


# (service, endpoint, deployment, endpoint creation time) -> (read at, manifest): a re-created endpoint
# never sees its predecessor's model.
_info_cache: dict[tuple[int, str, str, float], tuple[float, dict[str, Any]]] = {}


async def model_info(service: InferenceService, ep: Endpoint, timeout: float) -> dict[str, Any]:
    """The manifest of the model behind an endpoint, as its worker has it (the gateway may hold no model
    files: in a cluster, pods download them)."""
    key = (id(service), ep.inference_id, ep.deployment_id, ep.created)
    hit = _info_cache.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < INFO_SECONDS:
        return hit[1]
    info = await worker_json(service, ep, "/info", {}, timeout)
    if len(_info_cache) > 1000:
        _info_cache.clear()
    _info_cache[key] = (now, info)
    return info


async def texts_of_token_ids(service: InferenceService, ep: Endpoint, ids: list[list[int]],
                             timeout: float) -> list[str]:
    """Inputs given as token ids, as text: decoded with the model's own tokenizer (then tokenised again
    by the normal path, so the numbers match the same text sent as a string)."""
    return (await worker_json(service, ep, "/decode", {"ids": ids}, timeout))["texts"]


def input_type_of_prompt(prompt_name: Any) -> str | None:
    """TEI's ``prompt_name`` (a sentence-transformers prompt name such as ``query``) as an Elasticsearch
    input_type, which picks the same prompt from the model's manifest."""
    if prompt_name is None:
        return None
    if not isinstance(prompt_name, str):
        raise ValidationFailed(["[prompt_name] must be a string"])
    if prompt_name.upper() in PROMPT_NAMES:
        return prompt_name.upper()
    for input_type, names in PROMPT_NAMES.items():
        if prompt_name in names:
            return input_type
    known = sorted({n for names in PROMPT_NAMES.values() for n in names})
    raise ValidationFailed([f"[prompt_name] [{prompt_name}] is not a known prompt name; use one of {known}"])


# -- pure post-processing -----------------------------------------------------------------------


def check_dimensions(dimensions: Any, info: dict[str, Any], model: str) -> int | None:
    """``dimensions`` is allowed only for models trained for it (Matryoshka); None means: leave as is."""
    if dimensions is None:
        return None
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise ValidationFailed(["[dimensions] must be a positive integer"])
    full = info.get("dimensions")
    if full is not None and dimensions == full:
        return None
    if full is not None and dimensions > full:
        raise BadRequest(f"[dimensions] [{dimensions}] is larger than the [{full}] dimensions of model "
                         f"[{info.get('model_id')}] behind [{model}]")
    trained = (info.get("options") or {}).get(MATRYOSHKA)
    if not trained:
        raise BadRequest(
            f"model [{info.get('model_id')}] behind [{model}] was not trained for shortened embeddings (Matryoshka), "
            f"so [dimensions] is refused: truncating its vectors would lose quality silently. If it was, import it "
            f"with `infernetes models import ... --matryoshka-dimensions {dimensions}`")
    if dimensions not in trained:
        raise BadRequest(f"[dimensions] [{dimensions}] is not one of the sizes model [{info.get('model_id')}] was "
                         f"trained for: {sorted(trained, reverse=True)}")
    return dimensions


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit length per row; rows already of unit length (within float32 rounding) are left bit for bit."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    redo = (np.abs(norms - 1.0) > 1e-6) & (norms > 0)
    return np.where(redo, vectors / np.where(norms > 0, norms, 1.0), vectors).astype(np.float32)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka: keep the first ``dimensions`` values and bring the vector back to unit length."""
    return normalize(np.ascontiguousarray(vectors[:, :dimensions]))


def vectors_of(result: dict[str, Any]) -> np.ndarray:
    return np.asarray([e["embedding"] for e in result["text_embedding"]], dtype=np.float32)


def b64(vector: np.ndarray) -> str:
    """OpenAI's ``encoding_format=base64``: little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()
