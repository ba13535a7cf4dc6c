"""The operator test harness. kmock's Kubernetes emulator, made real enough for the operator: metadata that a real API server
fills (uid, resourceVersion, generation, creationTimestamp), generation bumps on spec changes only,
label-selector filtering, typed lists, and owner-reference garbage collection."""

from __future__ import annotations

import datetime
import itertools
import uuid
import asyncio
import contextlib
from typing import Any

import attrs
import kmock
from kmock._internal import enums

from infernetes.operator.kube import DEPLOYMENT_KIND, DEPLOYMENTS, ENDPOINT_KIND, ENDPOINTS, GROUP, VERSION
from infernetes.operator.kube.client import Kube, KubeConfig
from infernetes.operator.kube.handlers import build_registry
from infernetes.operator.kube.operator import Reconciler
from infernetes.operator.kube.settings import OperatorSettings

_versions = itertools.count(1000)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    # (action, plural, name) of every write, for assertions on churn.
    writes: list[tuple[str, str, str | None]] = attrs.field(factory=list)

    async def _handle(self, request: Any) -> Any:
        deleted_uid = None
        if request.resource is not None and request.action in (
                enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            self.writes.append((str(request.action.value), request.resource.plural, request.name))
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", _now())
                if request.namespace and "namespace" not in meta:
                    meta["namespace"] = request.namespace
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == enums.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                current = self.objects[key] if key in self.objects and not self.objects[key].deleted else None
                if request.subresource == "status":
                    for k in list(request.data):
                        if k not in ("status", "metadata"):
                            del request.data[k]
                    meta.clear()
                elif current is not None and "spec" in request.data:
                    old_spec = dict(current.get("spec") or {})
                    from kmock._internal import dicts

                    new_spec = dicts.patch_dict(_deep(old_spec), request.data["spec"] or {})
                    if new_spec != old_spec:
                        meta["generation"] = (current.get("metadata", {}).get("generation") or 1) + 1
                meta["resourceVersion"] = str(next(_versions))
        key = None
        if request.resource is not None and request.name is not None and \
                request.action in (enums.action.DELETE, enums.action.UPDATE):
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                deleted_uid = self.objects[key].get("metadata", {}).get("uid")
        response = await super()._handle(request)
        # The object is gone for good (deleted without finalizers, or its last finalizer removed): collect.
        if deleted_uid is not None and key in self.objects and self.objects[key].deleted:
            await self._collect(deleted_uid)
        return response

    async def _collect(self, uid: str) -> None:
        """Garbage-collect what the deleted owner owned, once it is really gone (no finalizers left)."""
        owners_alive = {o.get("metadata", {}).get("uid") for (_, _, _), o in self.objects.items() if not o.deleted}
        if uid in owners_alive:
            return
        for (res, ns, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            refs = obj.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                gone_uid = obj.get("metadata", {}).get("uid")
                obj.delete()
                await self._buses[res].put({"type": "DELETED", "object": obj.last.raw if obj.last else {}})
                if gone_uid:
                    await self._collect(gone_uid)

    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            result["items"] = [i for i in result["items"]
                               if _matches((i.get("metadata") or {}).get("labels") or {}, selector)]
        kind = self.resources[request.resource].kind if request.resource in self.resources else None
        result["kind"] = f"{kind}List" if kind else "List"
        result["apiVersion"] = (f"{request.resource.group}/{request.resource.version}"
                                if request.resource.group else request.resource.version)
        return result


def _deep(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


NS = "search"


def declare_resources(k: kmock.KubernetesEmulator) -> None:
    k.resources.load_bundled()
    for plural, kind, short in ((ENDPOINTS, ENDPOINT_KIND, "ie"), (DEPLOYMENTS, DEPLOYMENT_KIND, "mdep")):
        k.resources[f"{GROUP}/{VERSION}/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=True, shortnames={short},
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"}, subresources={"status", "scale"})


class RunningOperator:
    """The operator, as `infernetes operator` runs it, in a thread with its own event loop.

    A thread keeps kopf's shutdown (which waits for every task of its loop) away from the test's loop."""

    def __init__(self, kube_config: KubeConfig, settings: OperatorSettings) -> None:
        import threading

        self.kube_config = kube_config
        self.settings = settings
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # name -> set once this operator has finished a reconcile of that object (resume, create or update)
        self.reconciled: dict[str, threading.Event] = {}
        self._reconciled_lock = threading.Lock()

    def _event(self, name: str) -> threading.Event:
        import threading

        with self._reconciled_lock:
            return self.reconciled.setdefault(name, threading.Event())

    async def wait_reconciled(self, name: str, timeout: float = 30) -> None:
        if not await asyncio.to_thread(self._event(name).wait, timeout):
            raise AssertionError(f"the operator never reconciled [{name}]")

    def _recording(self, reconciler: Reconciler) -> Reconciler:
        reconcile = reconciler.reconcile

        async def recorded(plural: str, body: dict[str, Any]) -> Any:
            result = await reconcile(plural, body)
            self._event(body["metadata"]["name"]).set()
            return result

        reconciler.reconcile = recorded  # type: ignore[method-assign]
        return reconciler

    def _run(self) -> None:
        import kopf

        async def main() -> None:
            kube = Kube(self.kube_config)
            try:
                registry = build_registry(self._recording(Reconciler(kube, self.settings)), self.kube_config, [NS])
                await kopf.operator(registry=registry, standalone=True, namespaces=[NS],
                                    stop_flag=self.stop_flag, ready_flag=self.ready)
            finally:
                await kube.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def start(self) -> None:
        import threading

        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self.thread.start()
        if not await asyncio.to_thread(self.ready.wait, 15):
            raise RuntimeError(f"the operator did not start: {self.error!r}")

    async def stop(self) -> None:
        self.stop_flag.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 30)


async def eventually(predicate, timeout: float = 45.0, interval: float = 0.1):
    """Poll until the predicate holds; the timeout is only a ceiling for a stuck system (a busy CI machine
    may take many seconds for what an idle one does at once), never a pace."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in time (last value: {last!r})")
