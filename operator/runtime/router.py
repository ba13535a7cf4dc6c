"""Forwarding inference requests to allocations.

Picks the ready allocation with the fewest requests in flight from this gateway, and when the
chosen worker dies mid-request (connection refused or reset) or answers 503 (not serving yet, or
draining), retries once on another one: inference is idempotent, so a retry is safe. The worker's answer is passed through unparsed.

aiohttp rather than httpx here: on this hot path it costs about half the CPU per request
(profiled), and kopf already brings it in.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable

import aiohttp
import orjson

from ..errors import RequestTimeout, ServiceUnavailable, error_body

RETRIABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
JSON_HEADERS = {"Content-Type": "application/json"}
# Worker headers the gateway passes on: back-pressure, and the prompt token count (OpenAI's usage).
PASSED_HEADERS = ("Retry-After", "X-Infernetes-Prompt-Tokens")


# The request's timeout, in seconds: the worker drops the request wherever it is once it passes.
TIMEOUT_HEADER = "X-Infernetes-Timeout"


class Router:
    def __init__(self, credential: str | None = None) -> None:
        # Workers accept only calls that carry this run's credential (WorkerSettings.auth_token).
        self.headers = {**JSON_HEADERS, **({"Authorization": f"Bearer {credential}"} if credential else {})}
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
                headers = {**self.headers, TIMEOUT_HEADER: f"{timeout:.3f}"}
                async with self.session.post(url + path, data=payload, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout,
                                                                           connect=min(5.0, timeout))) as resp:
                    content = await resp.read()
                    if resp.status == 503 and len(candidates) > 1:
                        # Not serving (a replacement still loading on the dead one's port, or one
                        # draining): another allocation can answer now.
                        candidates.remove(url)
                        continue
                    if 400 <= resp.status < 500 and not _is_es_error(content):
                        reason = content[:200].decode("utf-8", "replace").strip() or f"HTTP {resp.status}"
                        return resp.status, orjson.dumps(error_body(resp.status, "status_exception", reason)), {}
                    if resp.status >= 500 and not _is_es_error(content):
                        # Not the worker's own answer: its server cut the request off (the allocation was
                        # stopped and the request outlived the drain timeout) and sent a plain-text 500.
                        raise ServiceUnavailable(
                            f"the allocation of {what} stopped before it answered (HTTP {resp.status}: "
                            f"{content[:100].decode('utf-8', 'replace').strip() or 'no body'}): it was stopped or "
                            "scaled down while the request ran longer than its drain timeout, or it failed; "
                            "retry the request")
                    return resp.status, content, {k: v for k in PASSED_HEADERS if (v := resp.headers.get(k))}
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


def _is_es_error(content: bytes) -> bool:
    """Whether an error answer is the worker's own (JSON, with an ``error``), not its HTTP server's."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "error" in body
