"""Forwarding inference requests to allocations.

Picks the ready allocation with the fewest requests in flight from this gateway, and when the
chosen worker dies mid-request (connection refused or reset), retries once on another one:
inference is idempotent, so a retry is safe. The worker's answer is passed through unparsed.
"""

from __future__ import annotations

import collections
import itertools
import socket
from collections.abc import Callable

import httpx

from ..errors import RequestTimeout, ServiceUnavailable

RETRIABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class Router:
    def __init__(self) -> None:
        # TCP_NODELAY: httpx writes headers and body separately; with Nagle's algorithm on, the body waits for
        # the worker's delayed ACK (40 ms) on every reused connection.
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024, keepalive_expiry=60),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self.client = httpx.AsyncClient(transport=transport, timeout=None, trust_env=False)
        self.inflight: collections.Counter[str] = collections.Counter()
        self._turn = itertools.count()

    async def close(self) -> None:
        await self.client.aclose()

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
    ) -> tuple[int, bytes, dict[str, str]]:
        candidates = list(urls)
        last_error: Exception | None = None
        for _attempt in range(2):
            if not candidates:
                break
            url = self.pick(candidates)
            self.inflight[url] += 1
            try:
                resp = await self.client.post(
                    url + "/infer",
                    content=payload,
                    headers={"content-type": "application/json"},
                    timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
                )
            except httpx.TimeoutException:
                raise RequestTimeout(
                    f"Timed out after [{timeout:g}s] waiting for inference on {what}; "
                    "the request was cancelled (raise ?timeout= for long inputs)"
                ) from None
            except RETRIABLE as exc:
                last_error = exc
                candidates.remove(url)
                if on_failure:
                    on_failure(url)
                continue
            finally:
                self.inflight[url] -= 1
                if self.inflight[url] <= 0:
                    del self.inflight[url]
            headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
            return resp.status_code, resp.content, headers
        raise ServiceUnavailable(
            f"no allocation of {what} could process the request"
            + (f" (the allocation failed: {type(last_error).__name__})" if last_error else "")
            + "; retry the request"
        )
