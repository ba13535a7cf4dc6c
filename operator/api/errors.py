"""The one error mapping of the gateway: every failure a client sees, in the shape its protocol expects.

Elasticsearch's routes answer Elasticsearch's error body (``{"error": {"root_cause", "type", "reason"},
"status"}``); the OpenAI routes (``/v1/embeddings``, ``/v1/models``) answer OpenAI's
(``{"error": {"message", "type", "param", "code"}}``); the Cohere-style ``/v1/rerank`` answers
Cohere's (``{"message"}``); the TEI routes (``/tei/...``) answer TEI's (``{"error", "error_type"}``).
The status code is the same whichever shape the body takes. Errors a worker sent (always
Elasticsearch-shaped) are re-shaped the same way.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InfernetesError, error_body

log = logging.getLogger("infernetes.gateway")
JSON = "application/json"

ELASTICSEARCH, OPENAI, COHERE, TEI = "elasticsearch", "openai", "cohere", "tei"

# OpenAI's error types by status (what its clients and docs use).
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}
# TEI's error types (text-embeddings-inference's ErrorType) by status.
_TEI_TYPES = {400: "Validation", 401: "Unauthorized", 403: "Unauthorized", 404: "Validation", 408: "Backend",
              413: "Validation", 422: "Validation", 429: "Overloaded", 503: "Unhealthy"}


def family(path: str) -> str:
    """Which protocol a path belongs to, hence the shape of its errors."""
    if path.startswith(("/v1/rerank", "/v2/")):
        return COHERE
    if path.startswith("/v1/"):
        return OPENAI
    if path.startswith("/tei/"):
        return TEI
    return ELASTICSEARCH


def shaped_body(path: str, status: int, error_type: str, reason: str, es_body: dict[str, Any] | None = None,
                param: str | None = None) -> dict[str, Any]:
    kind = family(path)
    if kind == OPENAI:
        return {"error": {"message": reason, "type": _OPENAI_TYPES.get(status, "server_error"),
                          "param": param, "code": error_type}}
    if kind == COHERE:
        return {"message": reason}
    if kind == TEI:
        return {"error": reason, "error_type": _TEI_TYPES.get(status, "Backend")}
    return es_body if es_body is not None else error_body(status, error_type, reason)


def render_error(path: str, status: int, error_type: str, reason: str, *, headers: dict[str, str] | None = None,
                 es_body: dict[str, Any] | None = None, pretty: bool = False) -> Response:
    body = shaped_body(path, status, error_type, reason, es_body)
    option = orjson.OPT_INDENT_2 if pretty else 0
    return Response(orjson.dumps(body, option=option), status, headers=headers, media_type=JSON)


def _pretty(request: Request | None) -> bool:
    if request is None:
        return False
    value = request.query_params.get("pretty")
    return value is not None and value.lower() in ("", "true", "1")


def error_response(request: Request | None, exc: InfernetesError, path: str | None = None) -> Response:
    """The answer for one of our exceptions (``path`` when there is no request yet: the auth layer)."""
    where = path if path is not None else (request.url.path if request is not None else "/")
    return render_error(where, exc.status, exc.error_type, exc.reason, headers=exc.headers, es_body=exc.body(),
                        pretty=_pretty(request))


def worker_error(path: str, status: int, content: bytes, headers: dict[str, str]) -> Response:
    """A worker's (Elasticsearch-shaped) error, re-shaped for the protocol of ``path``."""
    if family(path) == ELASTICSEARCH:
        return Response(content, status, headers=headers, media_type=JSON)
    try:
        err = orjson.loads(content)["error"]
        error_type, reason = str(err["type"]), str(err["reason"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error_type, reason = "status_exception", (content.decode("utf-8", "replace") or f"status {status}")
    return render_error(path, status, error_type, reason, headers=headers)


def install(app: FastAPI) -> None:
    """Map every exception a request can raise, once, for all routers."""

    @app.exception_handler(InfernetesError)
    async def _ours(request: Request, exc: InfernetesError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 405:
            reason = f"Incorrect HTTP method for uri [{path}] and method [{request.method}]"
        elif exc.status_code == 404:
            reason = f"no handler found for uri [{path}] and method [{request.method}]"
        else:
            reason = str(exc.detail)
        status = 405 if exc.status_code == 405 else exc.status_code
        return render_error(path, status, "illegal_argument_exception", reason, pretty=_pretty(request))

    @app.exception_handler(RequestValidationError)
    async def _param_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        reason = f"[{'.'.join(str(p) for p in first['loc'])}] {first['msg']}"
        return render_error(request.url.path, 400, "illegal_argument_exception", reason, pretty=_pretty(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return render_error(request.url.path, 500, "exception", f"internal error: {type(exc).__name__}")
