"""A small async Kubernetes REST client: plain dicts in and out, merge patches, server-side apply.

Credentials come from the ``kubernetes`` package's loaders (in-cluster service account, or a
kubeconfig named explicitly, ``$KUBECONFIG``, or ``~/.kube/config``); the calls go through httpx,
so the gateway and the async kopf handlers share one non-blocking client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import Conflict, ResourceNotFound, StatusError

log = logging.getLogger("infernetes.kube")
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
FIELD_MANAGER = "infernetes"
ANNOTATION_APPLIED = "infernetes.dev/applied-hash"  # hash of the manifest applied last
MAX_RETRY_AFTER_S = 30.0  # the longest a 429's Retry-After is waited for, per attempt
MAX_THROTTLED_ATTEMPTS = 5

PLURALS = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
}


class KubeError(StatusError):
    pass


@dataclass
class KubeConfig:
    host: str
    token: Callable[[], str | None]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    namespace: str | None = None
    in_cluster: bool = False

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeConfig:
        """In-cluster credentials when running in a pod, else the kubeconfig (explicit path, $KUBECONFIG, ~/.kube)."""
        from kubernetes import config as kconfig
        from kubernetes.client import Configuration

        cfg = Configuration()
        in_cluster = False
        if kubeconfig is None:
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
                in_cluster = True
            except kconfig.ConfigException:
                pass
        namespace = None
        if not in_cluster:
            kconfig.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                     persist_config=False)
            try:
                _, active = kconfig.list_kube_config_contexts(config_file=kubeconfig)
                namespace = (active or {}).get("context", {}).get("namespace")
            except (kconfig.ConfigException, OSError):
                namespace = None
        else:
            try:
                with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                    namespace = f.read().strip()
            except OSError:
                namespace = None

        def token() -> str | None:
            if cfg.refresh_api_key_hook is not None:
                cfg.refresh_api_key_hook(cfg)
            value = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
            return value.split(" ", 1)[-1] if value else None

        return cls(
            host=cfg.host.rstrip("/"),
            token=token,
            ca_file=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            verify=bool(cfg.verify_ssl),
            namespace=namespace,
            in_cluster=in_cluster,
        )


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
    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        verify: Any = config.ca_file or config.verify
        cert = (config.cert_file, config.key_file) if config.cert_file else None
        self.http = httpx.AsyncClient(base_url=config.host, verify=verify, cert=cert, timeout=30.0, trust_env=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json"}
        token = self.config.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = content_type
        import asyncio
        import json

        for attempt in range(MAX_THROTTLED_ATTEMPTS):
            resp = await self.http.request(method, path, params=params, headers=headers,
                                           content=json.dumps(body) if body is not None else None)
            if resp.status_code != 429 or attempt == MAX_THROTTLED_ATTEMPTS - 1:
                break
            # API priority and fairness (or a proxy) asks us to come back later: wait as long as it says.
            await asyncio.sleep(retry_after(resp))
        if resp.status_code == 404:
            raise ResourceNotFound(f"{method} {path}: not found")
        if resp.status_code == 409:
            raise Conflict(f"{method} {path}: {_message(resp)}")
        if resp.status_code >= 400:
            raise KubeError(f"{method} {path}: {resp.status_code} {_message(resp)}")
        return resp.json() if resp.content else None

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


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.text)[:500]
    except ValueError:
        return resp.text[:500]


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the hash of its content as an annotation (what makes a dropped field a change)."""
    import hashlib
    import json

    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION_APPLIED}
    digest = hashlib.sha256(json.dumps({**manifest, "metadata": {**meta, "annotations": annotations}},
                                       sort_keys=True).encode()).hexdigest()[:16]
    meta["annotations"] = {**annotations, ANNOTATION_APPLIED: digest}
    return {**manifest, "metadata": meta}


def retry_after(resp: httpx.Response) -> float:
    """Seconds a 429 asks to wait (Retry-After header, else the Status details), within bounds."""
    raw = resp.headers.get("Retry-After")
    if raw is None:
        try:
            raw = ((resp.json() or {}).get("details") or {}).get("retryAfterSeconds")
        except ValueError:
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
