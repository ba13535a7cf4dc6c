"""What every router of the gateway shares: reading bodies, writing JSON answers, query parameters,
and the OpenAPI fragments for bodies the handlers read themselves."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..auth import Authenticator
from ..errors import ParseError, PayloadTooLarge, ValidationFailed
from ..filterpath import filter_path

JSON = "application/json"


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 32 * 1024 * 1024
    put_timeout: float = 30.0
    inference_timeout: float = 30.0
    cluster_name: str = "infernetes"
    # API-key authentication; None turns it off (trusted networks, or loopback only).
    auth: Authenticator | None = None


# -- OpenAPI descriptions of bodies and parameters the handlers read themselves ---------------------


def query_params(*params: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI descriptions of query parameters the handlers read themselves (Elasticsearch's names)."""
    return {"parameters": [{"name": n, "in": "query", "required": False, "description": d, "schema": sch}
                           for n, d, sch in params]}


STR = {"type": "string"}
BOOL = {"type": "string", "enum": ["true", "false", ""]}
INT = {"type": "integer"}
TIMEOUT = ("timeout", "how long to wait, as an Elasticsearch time value (30s, 2m); default 30s", STR)


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {JSON: {"schema": schema}},
        }
    }


# -- responses ------------------------------------------------------------------------------------


def json_response(request: Request, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, honouring Elasticsearch's ``pretty`` and ``filter_path`` parameters."""
    option = orjson.OPT_INDENT_2 if flag(request, "pretty") else 0
    spec = request.query_params.get("filter_path")
    if spec:
        return FilteredJSON(data, spec, option, status, headers)
    return Response(orjson.dumps(data, option=option), status, headers=headers, media_type=JSON)


class FilteredJSON(Response):
    """A JSON answer filtered by ``filter_path`` on a worker thread as it is sent: however big the document
    and the patterns, the event loop keeps serving every other request meanwhile."""

    def __init__(self, data: Any, spec: str, option: int, status: int, headers: dict[str, str] | None) -> None:
        self._data, self._spec, self._option, self._headers = data, spec, option, headers
        super().__init__(b"", status, headers=headers, media_type=JSON)

    def _render(self) -> bytes:
        return orjson.dumps(filter_path(self._data, self._spec), option=self._option)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.body = await asyncio.to_thread(self._render)
        self.init_headers(self._headers)  # the Content-Length of the filtered body
        await super().__call__(scope, receive, send)


def plain_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer for the other protocols (OpenAI, TEI, Cohere), which know no filter_path."""
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers=headers, media_type=JSON)


def flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    return value is not None and value.lower() in ("", "true", "1")


def int_param(request: Request, name: str, body: dict[str, Any] | None = None) -> int | None:
    value: Any = request.query_params.get(name)
    if value is None and body is not None:
        value = body.get(name)
    if value is None:
        return None
    if isinstance(value, (bool, float)):  # 1.5 is no integer (nor is 2.0), as Elasticsearch's parsers say
        raise ValidationFailed([f"[{name}] must be an integer, got [{value}]"])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationFailed([f"[{name}] must be an integer, got [{value}]"]) from None


async def read_json(request: Request, max_bytes: int, *, required: bool = True) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
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


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_cancellable(request: Request, work: Any) -> Any:
    """Run ``work`` (a coroutine) until it finishes or the client disconnects (then: None).

    Cancelling closes the connection to the worker, which drops the job before the model runs it.
    """
    call = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(request))
    await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
    if not call.done():
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call
        return None
    gone.cancel()
    return call.result()
