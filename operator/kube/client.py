"""The operator's and the gateway's Kubernetes client: plain dicts in and out, merge patches, server-side apply.

The transport, the credentials and the TLS settings are ``kubernetes_asyncio``'s (the official client's
async sibling): in-cluster service account with the projected token re-read as it rotates, or a
kubeconfig named explicitly, ``$KUBECONFIG`` (several files merged as kubectl merges them) or
``~/.kube/config``, with its context, client certificates, ``certificate-authority``,
``tls-server-name``, ``proxy-url`` and exec credential plugins (run without blocking the event loop,
again when their token expires). What this module adds is small: resources as plain dicts (the
operator builds manifests, not models), 429 ``Retry-After`` honoured, server-side apply skipped
when the live object already matches, and streaming watches for :mod:`.watchcache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig

from ..errors import Conflict, ResourceNotFound, StatusError

log = logging.getLogger("infernetes.kube")
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
FIELD_MANAGER = "infernetes"
ANNOTATION_APPLIED = "infernetes.dev/applied-hash"  # hash of the manifest applied last
MAX_RETRY_AFTER_S = 30.0  # the longest a 429's Retry-After is waited for, per attempt
MAX_THROTTLED_ATTEMPTS = 5
REQUEST_TIMEOUT_S = 30.0
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
}


class KubeError(StatusError):
    """The API server refused a call; ``code`` is its HTTP status."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class KubeConfig:
    """Where the API server is and how to authenticate to it: a ``kubernetes_asyncio`` Configuration
    (shared by every :class:`Kube` made from it, in any thread) and the namespace of the context."""

    configuration: kclient.Configuration
    namespace: str | None = None
    in_cluster: bool = False
    token_expiry: Callable[[], datetime.datetime | None] = field(default=lambda: None)

    @classmethod
    def for_token(cls, host: str, token: str | Callable[[], str | None] | None = None, *,
                  ca_file: str | None = None, verify: bool = True, namespace: str | None = None) -> KubeConfig:
        """A fixed server and bearer token (a callable is asked again at every request: a rotating token)."""
        cfg = kclient.Configuration(host=host.rstrip("/"))
        cfg.ssl_ca_cert = ca_file
        cfg.verify_ssl = verify
        if callable(token):
            def refresh(configuration: kclient.Configuration) -> None:
                value = token()
                if value:
                    configuration.api_key["BearerToken"] = f"Bearer {value}"

            refresh(cfg)  # the library sends a token only when one is set before the request
            cfg.refresh_api_key_hook = refresh
        elif token:
            cfg.api_key["BearerToken"] = f"Bearer {token}"
        return cls(configuration=cfg, namespace=namespace)

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
        """:meth:`load_async` for the command line's synchronous start (no event loop running yet)."""
        return asyncio.run(cls.load_async(kubeconfig, context))

    @classmethod
    async def load_async(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
        """In-cluster credentials when running in a pod (and no kubeconfig is named), else the kubeconfig:
        the path given, else ``$KUBECONFIG`` (read now, not at import), else ``~/.kube/config``."""
        cfg = type.__call__(kclient.Configuration)  # a fresh one, never the library's process-wide default
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            with contextlib.suppress(kconfig.ConfigException):
                # Re-reads the projected service-account token as the kubelet rotates it.
                kconfig.load_incluster_config(client_configuration=cfg)
                namespace = None
                with contextlib.suppress(OSError), open(SERVICE_ACCOUNT_NAMESPACE) as f:
                    namespace = f.read().strip() or None
                return cls(configuration=cfg, namespace=namespace, in_cluster=True)
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        context = context or _current_context(path)
        loader = await kconfig.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                                persist_config=False)
        user = getattr(loader, "_user", None)
        if user is not None and "exec" in user:
            # An exec credential plugin (aws, gke-gcloud-auth-plugin, kubelogin...): run again, without
            # blocking the loop, when the token it gave expires (the loader keeps it until then).
            async def refresh(configuration: kclient.Configuration) -> None:
                await loader.load_from_exec_plugin()
                if getattr(loader, "token", None):
                    configuration.api_key["BearerToken"] = loader.token

            cfg.refresh_api_key_hook = refresh
        namespace = ((loader.current_context or {}).get("context") or {}).get("namespace")
        return cls(configuration=cfg, namespace=namespace,
                   token_expiry=lambda: getattr(loader, "exec_plugin_expiry", None))

    # What kopf's own connection needs (operator/kube/handlers.py login).
    @property
    def host(self) -> str:
        return str(self.configuration.host).rstrip("/")

    @property
    def ca_file(self) -> str | None:
        return self.configuration.ssl_ca_cert

    @property
    def cert_file(self) -> str | None:
        return self.configuration.cert_file

    @property
    def key_file(self) -> str | None:
        return self.configuration.key_file

    @property
    def verify(self) -> bool:
        return bool(self.configuration.verify_ssl)

    @property
    def proxy(self) -> str | None:
        return self.configuration.proxy

    @property
    def tls_server_name(self) -> str | None:
        return self.configuration.tls_server_name

    async def token(self) -> str | None:
        """The bearer token now (refreshed first: a rotated service-account token, an expired exec token)."""
        value = await self.configuration.get_api_key_with_prefix("BearerToken")
        return value.split(" ", 1)[-1] if value else None


def _current_context(paths: str) -> str | None:
    """The current context of a merged kubeconfig as kubectl reads it: the first file that sets one
    (the library takes the last; contexts, clusters and users it merges as kubectl does)."""
    import yaml

    for path in paths.split(os.pathsep):
        try:
            with open(os.path.expanduser(path)) as f:
                current = (yaml.safe_load(f) or {}).get("current-context")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if current:
            return str(current)
    return None


def resource_path(api_version: str, plural: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class Kube:
    """Plain-dict calls on one ``kubernetes_asyncio`` ApiClient (made on first use, in the caller's event loop)."""

    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        self._api: kclient.ApiClient | None = None

    @property
    def api(self) -> kclient.ApiClient:
        if self._api is None:
            self._api = kclient.ApiClient(configuration=self.config.configuration)
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None,
                    content_type: str = "application/json", timeout: Any = REQUEST_TIMEOUT_S) -> Any:
        """One request, the response unread (an ``aiohttp.ClientResponse``): the library adds the server,
        the credentials (refreshed when due), TLS, the proxy; a 429 is retried as it asks."""
        for attempt in range(MAX_THROTTLED_ATTEMPTS):
            resp = await self.api.call_api(
                path, method, query_params=dict(params) if params else None,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"], _preload_content=False, _request_timeout=timeout)
            if resp.status != 429 or attempt == MAX_THROTTLED_ATTEMPTS - 1:
                return resp
            # API priority and fairness (or a proxy) asks us to come back later: wait as long as it says.
            data = await resp.read()
            resp.release()
            await asyncio.sleep(retry_after(resp.headers, data))
        raise AssertionError("unreachable")

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        resp = await self._send(method, path, params=params, body=body, content_type=content_type)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if resp.status == 404:
            raise ResourceNotFound(f"{method} {path}: not found")
        if resp.status == 409:
            raise Conflict(f"{method} {path}: {_message(data)}")
        if resp.status >= 400:
            raise KubeError(f"{method} {path}: {resp.status} {_message(data)}", resp.status)
        return json.loads(data) if data else None

    async def watch(self, path: str, params: Mapping[str, Any], read_timeout_s: float
                    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch (``params`` carry ``watch=true`` and the resource version), until the
        server ends the stream. A refusal raises :class:`KubeError` with its status (410: version too old)."""
        resp = await self._send("GET", path, params=params, timeout=(10.0, read_timeout_s))
        try:
            if resp.status >= 400:
                raise KubeError(f"watch {path}: {resp.status} {_message(await resp.read())}", resp.status)
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            resp.release()

    # -- generic resource calls ---------------------------------------------------------------

    async def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(api_version, plural, namespace, name))
        except ResourceNotFound:
            return None

    async def list(self, api_version: str, plural: str, namespace: str | None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("GET", resource_path(api_version, plural, namespace), params=params)
        return list((data or {}).get("items", []))

    async def create(self, api_version: str, plural: str, namespace: str | None, body: dict[str, Any]) -> Any:
        return await self.request("POST", resource_path(api_version, plural, namespace), body=body)

    async def patch(self, api_version: str, plural: str, namespace: str | None, name: str, body: dict[str, Any],
                    subresource: str | None = None) -> Any:
        return await self.request("PATCH", resource_path(api_version, plural, namespace, name, subresource),
                                  body=body, content_type=MERGE_PATCH)

    async def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        try:
            await self.request("DELETE", resource_path(api_version, plural, namespace, name),
                               body={"propagationPolicy": "Background"})
            return True
        except ResourceNotFound:
            return False

    async def server_side_apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, forced: the object becomes exactly what the
        manifest says for every field the operator manages; fields it applied before and no longer
        applies are removed; fields others own (status, defaults, annotations of other tools) stay."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        meta = manifest["metadata"]
        path = resource_path(api_version, PLURALS[(api_version, kind)], meta["namespace"], meta["name"])
        result = await self.request("PATCH", path, params={"fieldManager": FIELD_MANAGER, "force": "true"},
                                    body=manifest, content_type=APPLY_PATCH)
        return dict(result or {})

    # -- apply of planned children ------------------------------------------------------------

    async def apply(self, manifest: dict[str, Any], existing: dict[str, Any] | None | bool = False) -> str:
        """Apply the manifest (server-side) unless the live object already matches it; returns created,
        patched or unchanged (:meth:`apply_object` also returns the object the server answered)."""
        return (await self.apply_object(manifest, existing))[0]

    async def apply_object(self, manifest: dict[str, Any], existing: dict[str, Any] | None | bool = False
                           ) -> tuple[str, dict[str, Any] | None]:
        """Apply the manifest (server-side) unless the live object already matches it; returns created,
        patched or unchanged, and the object as the server answered (None when unchanged).
        ``existing`` is the live object when the caller has it (None: absent).

        Matching: the manifest's hash annotation is the one applied last (so nothing was dropped from the plan)
        and every field of the manifest has its planned value in the live object (so nobody drifted it:
        ``kubectl scale``, a removed label). Server defaults added around the plan never count."""
        manifest = with_applied_hash(manifest)
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        meta = manifest["metadata"]
        if existing is False:
            existing = await self.get(api_version, PLURALS[(api_version, kind)], meta["namespace"], meta["name"])
        if isinstance(existing, dict) and _contains(existing, manifest):
            return "unchanged", None
        applied = await self.server_side_apply(manifest)
        return ("created" if existing is None else "patched"), applied


def _message(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    try:
        return str(json.loads(text).get("message") or text)[:500]
    except (ValueError, AttributeError):
        return text[:500]


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the hash of its content as an annotation (what makes a dropped field a change)."""
    import hashlib

    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION_APPLIED}
    digest = hashlib.sha256(json.dumps({**manifest, "metadata": {**meta, "annotations": annotations}},
                                       sort_keys=True).encode()).hexdigest()[:16]
    meta["annotations"] = {**annotations, ANNOTATION_APPLIED: digest}
    return {**manifest, "metadata": meta}


def retry_after(headers: Mapping[str, str], data: bytes) -> float:
    """Seconds a 429 asks to wait (Retry-After header, else the Status details), within bounds."""
    raw: Any = headers.get("Retry-After")
    if raw is None:
        try:
            raw = ((json.loads(data) or {}).get("details") or {}).get("retryAfterSeconds")
        except (ValueError, AttributeError):
            raw = None
    try:
        seconds = float(raw) if raw is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _contains(live: Any, wanted: Any) -> bool:
    """Every field of ``wanted`` has the same value in ``live`` (lists element by element, same length)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and _contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(
            _contains(a, b) for a, b in zip(live, wanted))
    return bool(live == wanted)
