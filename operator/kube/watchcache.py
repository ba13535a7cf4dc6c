"""A watch-fed cache of one kind of object: one LIST at start (and after a 410), then a WATCH.

The gateway answers every request from these caches, so its load on the API server is one open
watch per kind, whatever the request rate (a LIST per request or per second grows with both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from .client import Kube, KubeError, resource_path

log = logging.getLogger("infernetes.watchcache")


class WatchCache:
    def __init__(self, kube: Kube, api_version: str, plural: str, namespace: str | None,
                 label_selector: str | None = None, *, kind: str | None = None,
                 on_change: Callable[[], None] | None = None, timeout_s: int = 290, retry_s: float = 1.0) -> None:
        self.kube, self.api_version, self.plural = kube, api_version, plural
        self.namespace, self.label_selector, self.kind = namespace, label_selector, kind
        self.on_change = on_change or (lambda: None)
        self.timeout_s, self.retry_s = timeout_s, retry_s
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> object
        self.synced = asyncio.Event()
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None

    def items(self) -> list[dict[str, Any]]:
        return [self.objects[k] for k in sorted(self.objects)]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    async def start(self) -> None:
        await self.relist()
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.plural}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _params(self) -> dict[str, Any]:
        return {"labelSelector": self.label_selector} if self.label_selector else {}

    async def relist(self) -> None:
        data = await self.kube.request("GET", resource_path(self.api_version, self.plural, self.namespace),
                                       params=self._params() or None)
        objects = {}
        for obj in (data or {}).get("items", []):
            obj = self._typed(obj)
            objects[(obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        self.objects = objects
        self._version = ((data or {}).get("metadata") or {}).get("resourceVersion")
        self.synced.set()
        self.on_change()

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {**obj, "kind": self.kind} if self.kind else obj

    async def _run(self) -> None:
        while True:
            try:
                gone = await self._watch()
                if gone:
                    await self.relist()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped stream or an unreachable server: resume, then relist
                log.warning("watch of %s ended (%s); resuming", self.plural, exc)
                await asyncio.sleep(self.retry_s)
                with contextlib.suppress(Exception):
                    await self.relist()

    async def _watch(self) -> bool:
        """Follow the stream until it ends; True when the server says our version is too old (410)."""
        params = {**self._params(), "watch": "true", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(self.timeout_s)}
        if self._version:
            params["resourceVersion"] = self._version
        path = resource_path(self.api_version, self.plural, self.namespace)
        events = self.kube.watch(path, params, read_timeout_s=self.timeout_s + 30)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return True
                        raise RuntimeError(f"watch {path}: {obj.get('message')}")
                    version = (obj.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self._version = version
                    if kind == "BOOKMARK":
                        continue
                    obj = self._typed(obj)
                    key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                    if kind == "DELETED":
                        self.objects.pop(key, None)
                    else:
                        self.objects[key] = obj
                    self.on_change()
        except KubeError as exc:
            if exc.code == 410:
                return True
            raise
        return False
