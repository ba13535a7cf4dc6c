"""A small async Kubernetes REST client: plain dicts in and out, merge patches, create-or-patch.

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
from .planner import ANNOTATION_TEMPLATE_HASH

log = logging.getLogger("infernetes.kube")
MERGE_PATCH = "application/merge-patch+json"

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
        import json

        resp = await self.http.request(method, path, params=params, headers=headers,
                                       content=json.dumps(body) if body is not None else None)
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

    # -- create-or-patch of planned children ---------------------------------------------------

    async def apply(self, manifest: dict[str, Any]) -> str:
        """Create the object, or patch what differs from the plan; returns created, patched or unchanged.

        The pod template is compared by the plan's hash annotation (server defaults never count as a
        difference); replicas, selector, ports and owner references are compared directly."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural = PLURALS[(api_version, kind)]
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        existing = await self.get(api_version, plural, namespace, name)
        if existing is None:
            try:
                await self.create(api_version, plural, namespace, manifest)
                return "created"
            except Conflict:  # created meanwhile (another replica, a restart): fall through to patching
                existing = await self.get(api_version, plural, namespace, name) or {}
        patch = _difference(existing, manifest)
        if not patch:
            return "unchanged"
        await self.patch(api_version, plural, namespace, name, patch)
        return "patched"


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.text)[:500]
    except ValueError:
        return resp.text[:500]


def _difference(existing: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    old_meta, new_meta = existing.get("metadata", {}), desired["metadata"]
    meta_patch = {}
    for key in ("labels", "annotations"):
        wanted = new_meta.get(key) or {}
        have = old_meta.get(key) or {}
        changed = {k: v for k, v in wanted.items() if have.get(k) != v}
        if changed:
            meta_patch[key] = changed
    if [o.get("uid") for o in old_meta.get("ownerReferences") or []] != \
            [o.get("uid") for o in new_meta.get("ownerReferences") or []]:
        meta_patch["ownerReferences"] = new_meta.get("ownerReferences") or []
    if meta_patch:
        patch["metadata"] = meta_patch
    old_spec, new_spec = existing.get("spec", {}) or {}, desired.get("spec", {})
    spec_patch = {}
    if desired["kind"] == "Deployment":
        if (old_meta.get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH) != \
                new_meta["annotations"].get(ANNOTATION_TEMPLATE_HASH):
            spec_patch["template"] = new_spec["template"]
            spec_patch["strategy"] = new_spec["strategy"]
        if old_spec.get("replicas") != new_spec.get("replicas"):
            spec_patch["replicas"] = new_spec["replicas"]
    else:
        for key in ("selector", "ports", "type"):
            if old_spec.get(key) != new_spec.get(key):
                spec_patch[key] = new_spec[key]
    if spec_patch:
        patch["spec"] = spec_patch
    return patch
