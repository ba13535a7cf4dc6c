"""Eland uploads in a cluster: the gateway keeps them on its volume and serves them to worker pods.

``PUT _ml/trained_models/{id}`` (with its definition parts and vocabulary) lands in a model store on
the gateway's upload volume (``uploads_dir``, a PersistentVolumeClaim, so uploads survive gateway
restarts; ReadWriteMany when the gateway has more than one replica, as the parts of one upload reach
any replica). A complete model is then published on the internal route ``/_infernetes/uploads/`` in
Elastic's repository layout — ``{id}.metadata.json`` (config, ``size``, ``sha256``), ``{id}.pt``
(range requests, so a pull resumes) and ``{id}.vocab.json`` — which the worker pods' init container
reads with the same ``infernetes models ensure --repository`` pull as Elastic's model repository:
resumable and checksum-verified. When a worker credential is configured, the route demands it
(``Authorization: Bearer``), as the workers demand it of the gateway.

The operator learns the task of an uploaded model from the same metadata (:func:`uploaded_task`).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import FileResponse, JSONResponse, Response

from ...worker.config import AUTH_TOKEN_ENV
from ...worker.download import builtin
from ...worker.elastic_format import DEFINITION, TASKS, VOCABULARY, Uploads, eland_names_for, read_config
from ...worker.modelstore import ModelInfo, ModelStore
from ..errors import BadRequest, InfernetesError, ResourceNotFound, Unauthorized
from .gateway import ClusterModels
from .settings import OperatorSettings

ROUTE = "/_infernetes/uploads"


class UploadingModels(ClusterModels):
    """The gateway's catalog with an upload volume: built-ins and declared models (pulled by pods), plus the models
    uploaded here, which are listed, described and checked from the volume's store."""

    pulls_locally = False  # packaged models are pulled by the worker pods, never into the gateway

    def __init__(self, settings: OperatorSettings, store: ModelStore) -> None:
        super().__init__(settings)
        self.store = store

    def _uploaded(self, model_id: str) -> ModelInfo | None:
        return None if builtin(model_id) is not None or model_id in self.settings.models else self.store.get(model_id)

    def get(self, model_id: str) -> ModelInfo | None:
        return self._uploaded(model_id)

    def task_of(self, model_id: str) -> str | None:
        info = self._uploaded(model_id)
        return info.task_type if info is not None else super().task_of(model_id)

    def size_of(self, model_id: str) -> int | None:
        info = self._uploaded(model_id)
        return info.size_bytes if info is not None else super().size_of(model_id)

    def list(self) -> list[ModelInfo]:
        declared = {m.model_id for m in super().list()}
        return super().list() + [m for m in self.store.list() if m.model_id not in declared]

    def resolve(self, model_id: str) -> ModelInfo:
        info = self._uploaded(model_id)
        if info is not None:
            return info
        if Uploads(self.store).exists(model_id):
            raise BadRequest(
                f"Model [{model_id}] is not fully defined: upload the rest of its definition parts and its vocabulary "
                f"(PUT _ml/trained_models/{model_id}/definition/<part>, PUT _ml/trained_models/{model_id}/vocabulary) "
                "before using it")
        similar = eland_names_for(model_id, [m.model_id for m in self.store.list()])
        if similar:
            raise ResourceNotFound(f"Could not find trained model [{model_id}]; did you mean [{similar[0]}]? "
                                   "(Eland stores models under lowercase ids, a hub id's `/` as `__`)")
        return super().resolve(model_id)

    def check(self, model_id: str, task_type: str, inference_id: str) -> ModelInfo | None:
        if self._uploaded(model_id) is None:
            if super().task_of(model_id) is None:
                self.resolve(model_id)
            return super().check(model_id, task_type, inference_id)
        task = self.task_of(model_id)
        if task != task_type:
            raise BadRequest(
                f"Model [{model_id}] serves the [{task}] task and cannot be used for the [{task_type}] task; "
                f"use PUT _inference/{task}/{inference_id}")
        return self._uploaded(model_id)


def uploads_catalog(settings: OperatorSettings) -> ClusterModels:
    """The gateway's catalog: with an upload volume when the settings name one."""
    if not settings.uploads_dir:
        return ClusterModels(settings)
    store = ModelStore(Path(settings.uploads_dir) / "models")
    store.root.mkdir(parents=True, exist_ok=True)
    return UploadingModels(settings, store)


def metadata(info: ModelInfo) -> dict[str, Any]:
    """``{id}.metadata.json`` of an uploaded model, as Elastic's repository publishes its models, plus the sha256 of
    the vocabulary file (Elastic's metadata has one for the definition only), so every file a pod pulls is checked."""
    config = read_config(info)
    return {**{k: v for k, v in config.items() if k != "model_id"}, "packaged_model_id": info.model_id,
            "model_type": "pytorch", "size": (info.path / DEFINITION).stat().st_size,
            "sha256": info.files[DEFINITION], "vocabulary_file": f"{info.model_id}.vocab.json",
            "vocabulary_sha256": info.files[VOCABULARY]}


class UploadsRoute:
    """The internal route worker pods pull uploaded models from, outside the API-key layer (pods hold no API key):
    it demands the worker credential when one is configured, as workers demand it of the gateway."""

    def __init__(self, app: Any, catalog: ClusterModels, token: str | None = None) -> None:
        self.app = app
        self.catalog = catalog
        self.token = token if token is not None else (os.environ.get(AUTH_TOKEN_ENV) or None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ROUTE + "/"):
            await self.app(scope, receive, send)
            return
        try:
            response = await asyncio.to_thread(self._answer, scope)
        except InfernetesError as exc:
            response = JSONResponse(exc.body(), exc.status, headers={"X-Elastic-Product": "Elasticsearch",
                                                                     **exc.headers})
        await response(scope, receive, send)

    def _answer(self, scope: dict[str, Any]) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            raise BadRequest(f"Incorrect HTTP method for uri [{scope['path']}] and method [{scope['method']}], "
                             "allowed: [GET, HEAD]")
        if self.token is not None:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                raise Unauthorized("the uploads route needs the worker credential (Authorization: Bearer)")
        name = scope["path"][len(ROUTE) + 1:]
        for suffix, file in ((".metadata.json", None), (".vocab.json", VOCABULARY), (".pt", DEFINITION)):
            if name.endswith(suffix) and "/" not in name:
                model_id = name.removesuffix(suffix)
                info = self.catalog.get(model_id) if isinstance(self.catalog, UploadingModels) else None
                if info is None or info.backend != "elastic":
                    break
                if file is None:
                    return JSONResponse(metadata(info))
                return FileResponse(info.path / file, media_type="application/octet-stream")
        raise ResourceNotFound(f"Could not find uploaded model file [{name}]")


# -- the operator's side ---------------------------------------------------------------------------

_known: dict[tuple[str, str], tuple[str, int | None, float]] = {}
_REMEMBER_S = 300.0


def uploaded_size(settings: OperatorSettings, model_id: str) -> int | None:
    """The definition size of an uploaded model whose task :func:`uploaded_task` read (to size the pods' memory)."""
    hit = _known.get((settings.uploads_url or "", model_id))
    return hit[1] if hit is not None else None


async def uploaded_task(settings: OperatorSettings, model_id: str) -> str | None:
    """Our task name of a model uploaded to the gateway (None if it has none, or it cannot be reached now)."""
    if not settings.uploads_url or builtin(model_id) is not None:
        return None
    key = (settings.uploads_url, model_id)
    hit = _known.get(key)
    if hit is not None and time.monotonic() - hit[2] < _REMEMBER_S:
        return hit[0]
    token = os.environ.get(AUTH_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(f"{settings.uploads_url.rstrip('/')}/{model_id}.metadata.json", headers=headers)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        meta = resp.json()
        es_task = next(iter(meta["inference_config"]))
    except (ValueError, KeyError, TypeError, StopIteration):
        return None
    task = TASKS.get(es_task)
    size = meta.get("size") if isinstance(meta.get("size"), int) else None
    if task is not None:
        _known[key] = (task, size, time.monotonic())
    return task


__all__ = ["ROUTE", "UploadingModels", "UploadsRoute", "metadata", "uploaded_size", "uploaded_task",
           "uploads_catalog"]
