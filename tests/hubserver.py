"""A small Hugging Face-shaped hub on loopback: tree listing and `resolve` downloads with Range support.

Faults can be injected per file: cut the connection after N bytes (to test resume), or serve
corrupted bytes (to test checksum verification). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
        self.corrupt: set[str] = set()
        self.delay = 0.0  # seconds to sleep per 1 MiB sent, to watch progress
        self.down = False  # answer 503 to everything
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_folder(self, repo: str, folder: Path) -> None:
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(folder))] = p.read_bytes()
        self.repos[repo] = files

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def is_lfs(path: str, data: bytes) -> bool:
        return path.endswith(".safetensors") or len(data) > 100_000

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, obj: object, status: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _split(self) -> tuple[str, str, str] | None:
                path = unquote(urlparse(self.path).path)
                if path.startswith("/api/models/") and "/tree/" in path:
                    repo, _, rest = path[len("/api/models/"):].partition("/tree/")
                    return "tree", repo, rest
                if "/resolve/" in path:
                    repo, _, rest = path.lstrip("/").partition("/resolve/")
                    _rev, _, file = rest.partition("/")
                    return "resolve", repo, file
                return None

            def do_GET(self) -> None:  # noqa: N802
                self._serve(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def _serve(self, head: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if hub.down:
                    self._json({"error": "unavailable"}, 503)
                    return
                parts = self._split()
                if parts is None or parts[1] not in hub.repos:
                    self._json({"error": "Repository not found"}, 404)
                    return
                kind, repo, rest = parts
                files = hub.repos[repo]
                if kind == "tree":
                    entries = []
                    for path, data in files.items():
                        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
                        if hub.is_lfs(path, data):
                            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                            "pointerSize": 134}
                        entries.append(entry)
                    self._json(entries)
                    return
                data = files.get(rest)
                if data is None:
                    self._json({"error": "Entry not found"}, 404)
                    return
                lfs = hub.is_lfs(rest, data)
                etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_id(data)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                body = data[start:]
                if not head and rest in hub.corrupt:
                    body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                if lfs:
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                cut = hub.cut_after.pop(rest, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                step = 1 << 20
                for i in range(0, len(body), step):
                    self.wfile.write(body[i:i + step])
                    if hub.delay:
                        time.sleep(hub.delay)

        return Handler
