"""API keys, as Elasticsearch does them: ``Authorization: ApiKey <base64(id:api_key)>``; the same
credential is accepted as ``Authorization: Bearer <base64(id:api_key)>``, which is how OpenAI and TEI
clients (and Elasticsearch's ``openai`` and ``hugging_face`` services) send their key.

Keys live in a JSON file of hashed secrets (never the secret itself): the data directory's
``api-keys.json`` locally, a mounted Secret in a cluster. Two privileges, in Elasticsearch's terms:
``manage_inference`` (create, update, delete endpoints and deployments; everything else too) and
``monitor_inference`` (read endpoints and stats, run inference).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import Forbidden, Unauthorized

MANAGE = "manage_inference"
MONITOR = "monitor_inference"
PRIVILEGES = (MANAGE, MONITOR)
# Requests anyone may make: liveness, and Prometheus scraping (protect it with a NetworkPolicy).
PUBLIC = {("GET", "/metrics"), ("HEAD", "/"), ("GET", "/_infernetes/health")}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    hash: str  # "sha256:<salt hex>:<digest hex>" (an empty salt is allowed, e.g. keys a Helm chart generated)
    privileges: list[str] = field(default_factory=lambda: [MANAGE])
    created: float = field(default_factory=time.time)

    def matches(self, secret: str) -> bool:
        try:
            algo, salt, digest = self.hash.split(":", 2)
        except ValueError:
            return False
        if algo != "sha256":
            return False
        actual = hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()
        return hmac.compare_digest(actual, digest)


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    return f"sha256:{salt.hex()}:{hashlib.sha256(salt + secret.encode()).hexdigest()}"


def required_privilege(method: str, path: str) -> str | None:
    """The privilege a request needs, or None for public requests."""
    if (method, path) in PUBLIC:
        return None
    if method in ("PUT", "DELETE") or path.endswith(("/deployment/_start", "/deployment/_stop",
                                                      "/deployment/_update")):
        return MANAGE
    return MONITOR


class KeyFile:
    """The API keys in one JSON file, re-read when the file changes (a rotated Kubernetes Secret)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[float, int] | None = None

    def keys(self) -> dict[str, ApiKey]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return self._keys
        if stamp != self._stamp:
            data = json.loads(self.path.read_text() or "[]")
            self._keys = {k["id"]: ApiKey(**{f: k[f] for f in ApiKey.__dataclass_fields__ if f in k}) for k in data}
            self._stamp = stamp
        return self._keys

    def add(self, name: str, privileges: list[str]) -> tuple[ApiKey, str]:
        """Create a key; returns it and the ``encoded`` credential to give to clients (shown once)."""
        for p in privileges:
            if p not in PRIVILEGES:
                raise ValueError(f"unknown privilege [{p}]; use {' or '.join(PRIVILEGES)}")
        key_id = secrets.token_urlsafe(15).replace("-", "a").replace("_", "b")[:20]
        secret = secrets.token_urlsafe(24)
        key = ApiKey(id=key_id, name=name, hash=hash_secret(secret), privileges=list(privileges))
        keys = dict(self.keys())
        keys[key.id] = key
        self._write(keys)
        return key, base64.b64encode(f"{key_id}:{secret}".encode()).decode()

    def remove(self, key_id: str) -> bool:
        keys = dict(self.keys())
        if keys.pop(key_id, None) is None:
            return False
        self._write(keys)
        return True

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".api-keys-")
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(k) for k in keys.values()], f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._stamp = None


class Authenticator:
    def __init__(self, keys: KeyFile) -> None:
        self.keys = keys

    def check(self, method: str, path: str, authorization: str | None) -> ApiKey | None:
        privilege = required_privilege(method, path)
        if privilege is None:
            return None
        if not authorization:
            raise Unauthorized(f"missing authentication credentials for REST request [{path}]")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() not in ("apikey", "bearer"):
            raise Unauthorized(f"unable to authenticate with provided credentials for REST request [{path}]: "
                               "only ApiKey (or Bearer) credentials are supported")
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            key_id, _, secret = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            key_id = secret = ""
        key = self.keys.keys().get(key_id)
        if not key_id or not secret or key is None or not key.matches(secret):
            raise Unauthorized(f"unable to authenticate with provided credentials for REST request [{path}]")
        if privilege not in key.privileges and MANAGE not in key.privileges:
            raise Forbidden(f"action [{method} {path}] is unauthorized for API key id [{key.id}] of name "
                            f"[{key.name}]: it needs the [{privilege}] privilege")
        return key
