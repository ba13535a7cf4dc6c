"""The embedded gateway's hop to a worker on the same machine: a Unix socket with length-prefixed frames.

Over HTTP, a short single-input request spent about a quarter of the worker's busy time in uvicorn and
Starlette (parsing, routing, middleware) and about a millisecond in the gateway's HTTP client (py-spy,
issue 16). This hop carries the same ``/infer`` body and answer without them:

    frame = u32 header length, u32 body length (big-endian), header (JSON object), body (bytes)

The gateway sends ``{"auth": credential, "timeout": seconds}`` and the request body; the worker answers
``{"status": code, "headers": {...}}`` and the same bytes ``POST /infer`` would. One request at a time
per connection, as HTTP/1.1 keep-alive: the gateway closing the connection is the client leaving, and
the worker drops the request wherever it is; the timeout works as ``X-Infernetes-Timeout``. The
credential is checked on every frame (a Unix socket's file mode is a second lock, not the only one).
On SIGTERM the worker stops accepting, closes idle connections and finishes the requests it holds,
inside uvicorn's graceful shutdown. Kubernetes pods keep HTTP (the gateway is on another machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 64 << 10
# Linux's sun_path holds 108 bytes with its terminating zero.
MAX_PATH_BYTES = 107


class FrameError(ValueError):
    """A frame that breaks the format (a header too large or not a JSON object)."""


def encode(header: dict[str, Any], body: bytes) -> tuple[bytes, bytes, bytes]:
    head = orjson.dumps(header)
    return PREFIX.pack(len(head), len(body)), head, body


async def read_frame(reader: asyncio.StreamReader, max_body: int | None = None
                     ) -> tuple[dict[str, Any], bytes | None] | None:
    """The next frame; None at a clean end of stream. A body over ``max_body`` is left unread (None)."""
    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES:
        raise FrameError(f"frame header of {head_len} bytes")
    try:
        header = orjson.loads(await reader.readexactly(head_len))
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    if max_body is not None and body_len > max_body:
        header["_body_bytes"] = body_len
        return header, None
    return header, await reader.readexactly(body_len)


def usable_path(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_PATH_BYTES


# What the app answers a hop request with: (status, headers, body, to run after sending).
Answer = tuple[int, dict[str, str], bytes, Callable[[], Awaitable[None]] | None]
Handler = Callable[[bytes, float | None, asyncio.Future[None]], Awaitable[Answer]]
Refusal = Callable[[int, str, str], bytes]


class HopServer:
    """The worker's end. Registered with uvicorn's server state, so its graceful shutdown covers the hop."""

    def __init__(self, path: Path, handle: Handler, refuse: Refusal, token: str | None, max_body_bytes: int,
                 server_state: Any) -> None:
        self.path = path
        self.handle = handle
        self.refuse = refuse
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.server_state = server_state
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_Connection] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by the worker this one replaces
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), backlog=1024)
        os.chmod(self.path, 0o600)
        self.server_state.connections.add(self)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: accept nothing new, close idle connections, let busy ones finish."""
        self.server_state.connections.discard(self)
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        for conn in list(self.connections):
            conn.shutdown()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, writer)
        self.connections.add(conn)
        self.server_state.connections.add(conn)
        try:
            await conn.run(reader)
        except (FrameError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a broken frame or a gateway gone mid-frame: nobody to answer
        finally:
            conn.close()


class _Connection:
    def __init__(self, hop: HopServer, writer: asyncio.StreamWriter) -> None:
        self.hop = hop
        self.writer = writer
        self.busy = False
        self.draining = False

    def shutdown(self) -> None:
        self.draining = True
        if not self.busy:
            self.close()

    def close(self) -> None:
        self.hop.connections.discard(self)
        self.hop.server_state.connections.discard(self)
        self.writer.close()

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.writer.write(b"".join(encode({"status": status, "headers": headers}, body)))

    async def run(self, reader: asyncio.StreamReader) -> None:
        hop = self.hop
        loop = asyncio.get_running_loop()
        while not self.draining:
            frame = await read_frame(reader, hop.max_body_bytes)
            if frame is None:
                return
            header, body = frame
            if hop.token is not None and not hmac.compare_digest(str(header.get("auth", "")).encode(), hop.token):
                self._send(403, {}, hop.refuse(403, "security_exception",
                                               "wrong credential: only the gateway may call a worker"))
                return
            if body is None:
                self._send(413, {}, hop.refuse(413, "status_exception", "request body is larger than the worker "
                                               f"accepts ({hop.max_body_bytes} bytes)"))
                return
            timeout = header.get("timeout")
            timeout = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else None
            self.busy = True
            # The gateway sends nothing more before the answer: end of stream now is the client leaving.
            gone: asyncio.Future[None] = loop.create_future()
            watch = asyncio.ensure_future(reader.read(1))
            watch.add_done_callback(functools.partial(_left, gone))
            try:
                status, headers, answer, after = await hop.handle(body, timeout, gone)
            finally:
                self.busy = False
                if not watch.done():
                    watch.cancel()
                    # Let the cancellation land: the stream allows one reader at a time.
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
            if gone.done():
                return  # the gateway left (or broke the one-request rule): the connection is done
            self._send(status, headers, answer)
            await self.writer.drain()
            if after is not None:
                await after()


def _left(gone: asyncio.Future[None], watch: asyncio.Future[bytes]) -> None:
    if watch.cancelled():
        return
    watch.exception()  # a reset reads as the gateway leaving too
    if not gone.done():
        gone.set_result(None)
