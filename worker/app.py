"""The worker's HTTP app: ``POST /infer``, the model's tokenizer (``POST /tokenize``, ``/decode``,
``/token_ids``), health, readiness, stats and Prometheus metrics.

The model loads on a background thread after the server starts listening, so ``/healthz`` answers
at once and ``/readyz`` turns 200 only when the model is loaded and warmed up. On SIGTERM uvicorn
stops accepting and lets accepted requests finish (graceful scale-down).

Only the gateway may call: with ``auth_token`` set, everything but health, readiness and metrics needs
``Authorization: Bearer <token>`` (401 without, 403 wrong), and bodies over ``max_body_bytes`` get 413.
A request whose client disconnects, or whose deadline (``X-Infernetes-Timeout``) passes, is dropped
wherever it is: parsing and chunking (on a thread, never the event loop), tokenising, the queue, or
between the slices of a running batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import Batcher, QueueFull
from .config import WorkerSettings
from .elastic_tokenizers import TokenizationError
from .engine import Cancelled, Engine, InferRequest, Job, TooManyRows, engine_for
from .hop import Answer
from .metrics import WorkerMetrics
from .modelstore import MANIFEST, ModelInfo

log = logging.getLogger("infernetes.worker")
JSON = "application/json"
# What anyone may call without the gateway's credential: liveness, readiness and Prometheus metrics.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The gateway's own timeout for the request, in seconds: past it the worker drops the request wherever it is.
TIMEOUT_HEADER = "x-infernetes-timeout"
# Requests whose body is at least this large give their memory back to the system when they end.
TRIM_AFTER_BYTES = 1 << 20
# Bodies up to this size (without chunking) are parsed on the event loop: tens of microseconds, less than a thread hop.
INLINE_PARSE_BYTES = 16 << 10


def error_body(status: int, error_type: str, reason: str) -> dict[str, Any]:
    """An Elasticsearch-shaped error (the gateway passes worker errors through as they are)."""
    cause = {"type": error_type, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


def _error(status: int, error_type: str, reason: str, headers: dict[str, str] | None = None,
           background: BackgroundTask | None = None) -> Response:
    return Response(orjson.dumps(error_body(status, error_type, reason)), status, headers=headers, media_type=JSON,
                    background=background)


class GatewayOnly:
    """ASGI middleware: only the gateway's credential opens the worker, and no body is larger than the cap.

    A missing credential is 401, a wrong one 403 (compared in constant time). A declared body over the cap
    is 413 before a byte of it is read; a body without a length is read here up to the cap, then replayed.
    Liveness, readiness and metrics stay open (kubelet probes, Prometheus).
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = ("Bearer " + token).encode() if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"authorization")
        length = headers.get(b"content-length")
        refusal: Response | None = None
        if self.token is not None and given is None:
            refusal = _error(401, "security_exception", "missing credential: only the gateway may call a worker",
                             {"WWW-Authenticate": "Bearer"})
        elif self.token is not None and not hmac.compare_digest(given or b"", self.token):
            refusal = _error(403, "security_exception", "wrong credential: only the gateway may call a worker")
        elif length is not None and (not (length.isascii() and length.isdigit()) or int(length) > self.max_body_bytes):
            refusal = _too_large(self.max_body_bytes)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if length is not None or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await _too_large(self.max_body_bytes)(scope, receive, send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def _too_large(cap: int) -> Response:
    return _error(413, "status_exception", f"request body is larger than the worker accepts ({cap} bytes)")


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def freeze_heap() -> int:
    """Put every object alive now out of the garbage collector's reach, after a last collection; how many.

    A worker that loaded a sentence-transformers model holds ~420,000 objects (torch, transformers, the
    model's modules); a full collection walks every one, 0.25-0.5 s with the GIL held, and every request in
    flight waits that long. Frozen, they are never walked again, and a worker forked from a zygote no longer
    writes to the pages it shares with it when it collects (copy-on-write). Process-wide: call it once the
    process's long-lived objects exist (a zygote before it forks, a worker once its model is ready)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def trim_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them after large requests otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Ticket:
    """One request's cancellation: the client left, or its deadline passed. Filled in as the request moves on."""

    def __init__(self) -> None:
        self.cancelled = False
        self.reason = ""
        self.job: Job | None = None

    def cancel(self, reason: str, state: WorkerState) -> None:
        if self.cancelled:
            return
        self.cancelled, self.reason = True, reason
        state.metrics.cancelled.inc()
        if self.job is not None and not self.job.future.done():
            state.batcher.cancel(self.job)


class WorkerState:
    """What the worker knows about itself; built once per app."""

    def __init__(self, settings: WorkerSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = WorkerMetrics(settings.deployment_id, settings.allocation_id)
        self.metrics.threads.set(settings.num_threads)
        self.info = engine.info if engine else ModelInfo.from_manifest(
            settings.model_dir, orjson.loads((settings.model_dir / MANIFEST).read_bytes())
        )
        self.engine = engine or engine_for(self.info, settings.num_threads)
        self.batcher = Batcher(
            self.engine,
            self.metrics,
            capacity=settings.queue_capacity,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            slice_tokens=settings.cancel_slice_tokens,
            forward_overhead_tokens=settings.forward_overhead_tokens,
        )
        self.state = "loading"
        self.failure: str | None = None
        self.loaded = threading.Event()
        self.started_at = time.time()
        self.ready_at: float | None = None

    def load(self) -> None:
        try:
            if self.engine.model is None:
                self.engine.load()
            # After the fork (a zygote loads on the CPU and never touches CUDA): the GPU when there is one.
            self.engine.place(self.settings.device)
            self.engine.warmup()
            self.batcher.start()
            self.state = "started"
            self.ready_at = time.time()
            self.metrics.ready.set(1)
        except Exception as exc:  # reported through /readyz and the termination log
            log.exception("model failed to load")
            self.state = "failed"
            self.failure = f"model [{self.info.model_id}] failed to load: {type(exc).__name__}: {exc}"
        finally:
            self.loaded.set()

    def stats(self) -> dict[str, Any]:
        b = self.batcher
        count = b.inference_count
        return {
            "allocation_id": self.settings.allocation_id,
            "deployment_id": self.settings.deployment_id,
            "model_id": self.info.model_id,
            "state": self.state,
            "failure": self.failure,
            "inference_count": count,
            "average_inference_time_ms": round(1000 * b.inference_time / count, 3) if count else 0.0,
            "number_of_pending_requests": b.pending,
            "error_count": b.error_count,
            "rejected_execution_count": b.rejected_count,
            "last_access": int(b.last_access * 1000) if b.last_access else None,
            "start_time": int(self.started_at * 1000),
            "threads_per_allocation": self.settings.num_threads,
            "device": self.engine.device,
            "dtype": self.engine.dtype,
            "queue_capacity": self.settings.queue_capacity,
        }


def _parse(body: bytes, state: WorkerState) -> InferRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"Failed to parse request body: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    inputs = data.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        raise ValueError("[input] must be a non-empty string or array of strings")
    if len(inputs) > state.settings.max_inputs:
        raise ValueError(f"[input] has {len(inputs)} entries; at most {state.settings.max_inputs} are allowed")
    query = data.get("query")
    if state.info.task_type == "rerank" and not isinstance(query, str):
        raise ValueError("[query] is required for the [rerank] task")
    top_n = data.get("top_n")
    chunking = data.get("chunking")
    if chunking is not None and (not isinstance(chunking, dict) or state.info.task_type == "rerank"):
        raise ValueError("[chunking] must be an object of chunking settings, and does not apply to rerank")
    return InferRequest(
        inputs=inputs,
        input_type=data.get("input_type"),
        query=query,
        return_documents=data.get("return_documents", True) is not False,
        top_n=top_n if isinstance(top_n, int) and top_n > 0 else None,
        chunking=chunking,
    )


def create_app(settings: WorkerSettings, engine: Engine | None = None) -> Starlette:
    state = WorkerState(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = threading.Thread(target=_load_and_report, name="load", daemon=True)
        loader.start()
        yield
        state.state = "stopping"
        state.metrics.ready.set(0)
        state.batcher.stop()

    def _load_and_report() -> None:
        state.load()
        if state.failure and settings.termination_log:
            with contextlib.suppress(OSError):
                settings.termination_log.write_text(state.failure)

    async def infer(request: Request) -> Response:
        if state.state != "started":
            return _not_serving()
        body = await request.body()  # within max_body_bytes (GatewayOnly)
        ticket = Ticket()
        watcher = asyncio.create_task(_watch_disconnect(request, ticket, state))
        try:
            return await run_infer(body, _timeout_of(request.headers.get(TIMEOUT_HEADER)), ticket)
        finally:
            watcher.cancel()

    def _not_serving() -> Response:
        reason = state.failure or f"model [{state.info.model_id}] is {state.state}"
        return _error(503, "status_exception", reason, {"Retry-After": "1"})

    async def run_infer(body: bytes, timeout: float | None, ticket: Ticket) -> Response:
        """One inference request, whichever way it came (HTTP, or the embedded gateway's hop)."""
        t0 = time.perf_counter()
        # Large bodies leave large freed blocks behind: give them back once the answer is sent.
        trim = BackgroundTask(trim_memory) if len(body) >= TRIM_AFTER_BYTES else None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        timer = loop.call_later(timeout, ticket.cancel, "timeout", state) if timeout is not None else None
        try:
            return await _infer(body, ticket, future, t0, trim)
        finally:
            if timer is not None:
                timer.cancel()

    async def hop_infer(body: bytes, timeout: float | None, gone: asyncio.Future[None]) -> Answer:
        """``/infer`` over the hop (worker/hop.py): the same answer, as (status, headers, body, background)."""
        response = _not_serving() if state.state != "started" else None
        if response is None:
            ticket = Ticket()
            gone.add_done_callback(lambda _: ticket.cancel("disconnect", state))
            response = await run_infer(body, timeout if timeout is None or 0 < timeout < 1e7 else None, ticket)
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return response.status_code, headers, bytes(response.body), response.background

    def _new_job(body: bytes | InferRequest, future: asyncio.Future[None], ticket: Ticket) -> Job:
        req = body if isinstance(body, InferRequest) else _parse(body, state)
        return state.engine.new_job(req, future.get_loop(), future, max_rows=settings.queue_capacity,
                                    cancelled=lambda: ticket.cancelled)

    async def _prepare(body: bytes, future: asyncio.Future[None], ticket: Ticket) -> Job:
        """The request's job. A small body without chunking is parsed right here: a thread hop would cost more
        than the parse (profiled: short single-input requests); large bodies and chunking run on a thread."""
        if len(body) > INLINE_PARSE_BYTES:
            return await asyncio.to_thread(_new_job, body, future, ticket)
        req = _parse(body, state)
        if req.chunking is not None:
            return await asyncio.to_thread(_new_job, req, future, ticket)
        return _new_job(req, future, ticket)

    def _gone(ticket: Ticket, trim: BackgroundTask | None) -> Response:
        if ticket.reason == "timeout":
            return _error(408, "status_exception", "the request's timeout passed before inference finished; "
                          "it was dropped", background=trim)
        return Response(status_code=499, background=trim)  # the client is gone: nobody reads this

    async def _infer(body: bytes, ticket: Ticket, future: asyncio.Future[None], t0: float,
                     trim: BackgroundTask | None) -> Response:
        # Parsing large bodies and chunking are CPU work: off the event loop, and they stop early when the
        # request is given up.
        try:
            job = await _prepare(body, future, ticket)
        except ValueError as exc:
            return _error(400, "status_exception", str(exc), background=trim)
        except Cancelled:
            return _gone(ticket, trim)
        except Exception as exc:  # a bug in chunking must not answer with a bare 500
            log.exception("could not prepare the request")
            return _error(500, "status_exception", f"inference failed: {type(exc).__name__}: {exc}", background=trim)
        ticket.job = job
        if ticket.cancelled:
            return _gone(ticket, trim)
        try:
            await state.batcher.submit(job)
        except QueueFull:
            return _error(
                429,
                "es_rejected_execution_exception",
                f"inference process queue is full. Unable to execute command "
                f"(queue_capacity [{settings.queue_capacity}], pending [{state.batcher.pending}])",
                {"Retry-After": "1"},
            )
        except TokenizationError as exc:  # an input the model's tokenization refuses (truncate: none)
            return _error(400, "status_exception", str(exc))
        except Exception as exc:
            return _error(500, "status_exception", f"inference failed: {type(exc).__name__}: {exc}")
        if job.cancelled:
            return _gone(ticket, trim)
        t1 = time.perf_counter()
        payload = state.engine.render(job)
        state.metrics.postprocess_seconds.observe(time.perf_counter() - t1)
        state.metrics.requests.inc()
        state.metrics.request_seconds.observe(time.perf_counter() - t0)
        return Response(payload, media_type=JSON, headers={"X-Infernetes-Prompt-Tokens": str(job.tokens)},
                        background=trim)

    async def tokenizer_call(request: Request, work: Callable[[dict[str, Any]], Any]) -> Response:
        """Run one tokenizer request (``work`` reads the parsed body) on the tokeniser thread."""
        if state.state != "started":
            reason = state.failure or f"model [{state.info.model_id}] is {state.state}"
            return _error(503, "status_exception", reason, {"Retry-After": "1"})
        try:
            data = orjson.loads(await request.body())
            if not isinstance(data, dict):
                raise ValueError("request body must be a JSON object")
            result = await state.batcher.on_tokenizer_thread(work, data)
        except orjson.JSONDecodeError as exc:
            return _error(400, "parse_exception", f"Failed to parse request body: {exc}")
        except ValueError as exc:
            return _error(400, "status_exception", str(exc))
        return Response(orjson.dumps(result), media_type=JSON)

    def _strings(data: dict[str, Any], name: str) -> list[str]:
        value = data.get(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            raise ValueError(f"[{name}] must be a non-empty string or array of strings")
        if len(value) > settings.max_inputs:
            raise ValueError(f"[{name}] has {len(value)} entries; at most {settings.max_inputs} are allowed")
        return value

    def _tokenize(data: dict[str, Any]) -> dict[str, Any]:
        prompt = state.info.prompt_for(data.get("input_type"))
        add_special = data.get("add_special_tokens", True) is not False
        return {"tokens": state.engine.token_details(_strings(data, "input"), prompt, add_special)}

    def _decode(data: dict[str, Any]) -> dict[str, Any]:
        ids = data.get("ids")
        if (not isinstance(ids, list) or not ids or len(ids) > settings.max_inputs
                or not all(isinstance(row, list) and row and all(isinstance(t, int) and not isinstance(t, bool)
                                                                 for t in row) for row in ids)):
            raise ValueError(f"[ids] must be 1 to {settings.max_inputs} non-empty arrays of token ids")
        return {"texts": state.engine.decode(ids)}

    def _token_ids(data: dict[str, Any]) -> dict[str, Any]:
        return {"ids": state.engine.token_ids(_strings(data, "tokens"))}

    async def tokenize(request: Request) -> Response:
        return await tokenizer_call(request, _tokenize)

    async def decode(request: Request) -> Response:
        return await tokenizer_call(request, _decode)

    async def token_ids(request: Request) -> Response:
        return await tokenizer_call(request, _token_ids)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(request: Request) -> Response:
        body = orjson.dumps({"state": state.state, "failure": state.failure})
        return Response(body, 200 if state.state == "started" else 503, media_type=JSON)

    async def stats(request: Request) -> Response:
        return Response(orjson.dumps(state.stats()), media_type=JSON)

    async def info(request: Request) -> Response:
        return Response(orjson.dumps(state.info.manifest()), media_type=JSON)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/infer", infer, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
            Route("/token_ids", token_ids, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/stats", stats),
            Route("/info", info, methods=["GET", "POST"]),  # POST: what the gateway's router sends
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(GatewayOnly, token=settings.auth_token, max_body_bytes=settings.max_body_bytes)],
        lifespan=lifespan,
    )
    app.state.worker = state
    app.state.hop_infer = hop_infer
    return app


async def _watch_disconnect(request: Request, ticket: Ticket, state: WorkerState) -> None:
    """Cancel the request when the client disconnects, so the model never runs it."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel("disconnect", state)
            return


def _timeout_of(raw: str | None) -> float | None:
    """The gateway's timeout for a request (X-Infernetes-Timeout, seconds): past it the request is dropped."""
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        seconds = None
    if seconds is None or not 0 < seconds < 1e7:
        return None
    return seconds
