"""Forwarding inference requests to allocations.

Picks the ready allocation with the fewest requests in flight from this gateway, and when the
chosen worker dies mid-request (connection refused or reset) or answers 503 (not serving yet, or
draining), retries once on another one: inference is idempotent, so a retry is safe. The worker's answer is passed through unparsed.

aiohttp rather than httpx here: on this hot path it costs about half the CPU per request
(profiled), and kopf already brings it in.

In the embedded runtime ``/infer`` takes the binary hop (worker/hop.py: a Unix socket, length-prefixed
frames) instead of HTTP; the answers and the failure handling above are the same either way.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable

import aiohttp
import orjson

from ...worker import hop
from ..errors import RequestTimeout, ServiceUnavailable, error_body

class HopError(ConnectionError):
    """The hop's connection to a worker failed (reset, or closed before an answer)."""


class HopUnavailable(HopError):
    """Nothing listens on the worker's hop socket (a restart in progress): HTTP, whose listening socket the
    runtime holds across restarts, queues the request instead."""


RETRIABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, HopError)
JSON_HEADERS = {"Content-Type": "application/json"}
# Worker headers the gateway passes on: back-pressure, and the prompt token count (OpenAI's usage).
PASSED_HEADERS = ("Retry-After", "X-Infernetes-Prompt-Tokens")


# The request's timeout, in seconds: the worker drops the request wherever it is once it passes.
TIMEOUT_HEADER = "X-Infernetes-Timeout"


class Hops:
    """Kept connections of the binary hop (worker/hop.py), per worker socket path; one request at a time each."""

    def __init__(self, credential: str | None) -> None:
        self.credential = credential or ""
        self.idle: collections.defaultdict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = \
            collections.defaultdict(list)

    async def request(self, path: str, payload: bytes, timeout: float) -> tuple[int, bytes, dict[str, str]]:
        header = {"auth": self.credential, "timeout": round(timeout, 3)}
        for attempt in range(2):
            kept = self.idle[path]
            reused = bool(kept) and attempt == 0
            try:
                reader, writer = kept.pop() if reused else await asyncio.open_unix_connection(path, limit=1 << 20)
            except OSError as exc:  # not listening (stopping, restarting)
                raise HopUnavailable(f"{type(exc).__name__}: {exc}") from None
            answered = False
            try:
                writer.write(b"".join(hop.encode(header, payload)))
                frame = await hop.read_frame(reader)
                if frame is None or frame[1] is None:
                    raise ConnectionResetError("the worker closed the connection before answering")
                answered = True
            except (OSError, asyncio.IncompleteReadError, hop.FrameError) as exc:
                if reused:
                    # A kept connection the worker had closed (restarted, drained): the others are likely
                    # stale too. A fresh one: inference is idempotent.
                    self.discard(path)
                    continue
                raise HopError(f"{type(exc).__name__}: {exc}") from None
            finally:
                if not answered:  # also on cancellation and timeout: the worker sees the client leave
                    writer.close()
            kept.append((reader, writer))
            answer, body = frame
            return int(answer.get("status", 502)), body or b"", dict(answer.get("headers") or {})
        raise HopError("no connection")  # not reached: the second attempt returns or raises

    def discard(self, path: str) -> None:
        for _reader, writer in self.idle.pop(path, []):
            writer.close()

    def close(self) -> None:
        for kept in self.idle.values():
            for _reader, writer in kept:
                writer.close()
        self.idle.clear()


class Router:
    def __init__(self, credential: str | None = None, hop_path: Callable[[str], str | None] | None = None) -> None:
        # Workers accept only calls that carry this run's credential (WorkerSettings.auth_token).
        self.headers = {**JSON_HEADERS, **({"Authorization": f"Bearer {credential}"} if credential else {})}
        # The embedded runtime's workers also listen on a Unix socket (worker/hop.py): /infer goes there.
        self.hop_path = hop_path
        self.hops = Hops(credential)
        self._session: aiohttp.ClientSession | None = None
        self.inflight: collections.Counter[str] = collections.Counter()
        self._turn = itertools.count()

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the serving event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        self.hops.close()
        if self._session is not None:
            await self._session.close()

    def pick(self, urls: list[str]) -> str:
        # Least in flight; among equals, take turns so idle allocations share the load.
        start = next(self._turn) % len(urls)
        rotated = urls[start:] + urls[:start]
        return min(rotated, key=lambda u: self.inflight[u])

    async def forward(
        self,
        urls: list[str],
        payload: bytes,
        timeout: float,
        *,
        on_failure: Callable[[str], None] | None = None,
        what: str = "deployment",
        path: str = "/infer",
    ) -> tuple[int, bytes, dict[str, str]]:
        if timeout <= 0:  # aiohttp reads a zero timeout as "none"; Elasticsearch as "already passed"
            raise RequestTimeout(f"Timed out after [{timeout:g}s] waiting for inference on {what}")
        candidates = list(urls)
        last_error: Exception | None = None
        for _attempt in range(2):
            if not candidates:
                break
            url = self.pick(candidates)
            self.inflight[url] += 1
            try:
                hop_path = self.hop_path(url) if self.hop_path is not None and path == "/infer" else None
                status = 0
                if hop_path is not None:
                    try:
                        async with asyncio.timeout(timeout):
                            status, content, raw = await self.hops.request(hop_path, payload, timeout)
                        lower = {k.lower(): v for k, v in raw.items()}
                        passed = {k: v for k in PASSED_HEADERS if (v := lower.get(k.lower()))}
                    except HopUnavailable:
                        pass
                if not status:
                    status, content, passed = await self._post(url + path, payload, timeout)
                if status == 503 and len(candidates) > 1:
                    # Not serving (a replacement still loading on the dead one's port, or one
                    # draining): another allocation can answer now.
                    candidates.remove(url)
                    continue
                if 400 <= status < 500 and not _is_es_error(content):
                    reason = content[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
                    return status, orjson.dumps(error_body(status, "status_exception", reason)), {}
                if status >= 500 and not _is_es_error(content):
                    # Not the worker's own answer: its server cut the request off (the allocation was
                    # stopped and the request outlived the drain timeout) and sent a plain-text 500.
                    raise ServiceUnavailable(
                        f"the allocation of {what} stopped before it answered (HTTP {status}: "
                        f"{content[:100].decode('utf-8', 'replace').strip() or 'no body'}): it was stopped or "
                        "scaled down while the request ran longer than its drain timeout, or it failed; "
                        "retry the request")
                return status, content, passed
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"Timed out after [{timeout:g}s] waiting for inference on {what}; "
                    "the request was cancelled (raise ?timeout= for long inputs)"
                ) from None
            except RETRIABLE as exc:
                last_error = exc
                candidates.remove(url)
                if on_failure:
                    on_failure(url)
            finally:
                self.inflight[url] -= 1
                if self.inflight[url] <= 0:
                    del self.inflight[url]
        raise ServiceUnavailable(
            f"no allocation of {what} could process the request"
            + (f" (the allocation failed: {type(last_error).__name__})" if last_error else "")
            + "; retry the request"
        )


    async def _post(self, url: str, payload: bytes, timeout: float) -> tuple[int, bytes, dict[str, str]]:
        headers = {**self.headers, TIMEOUT_HEADER: f"{timeout:.3f}"}
        async with self.session.post(url, data=payload, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))) as resp:
            content = await resp.read()
            return resp.status, content, {k: v for k in PASSED_HEADERS if (v := resp.headers.get(k))}


def _is_es_error(content: bytes) -> bool:
    """Whether an error answer is the worker's own (JSON, with an ``error``), not its HTTP server's."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "error" in body
