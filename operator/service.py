"""The Elasticsearch inference API, independent of HTTP and of where things run.

:class:`InferenceService` implements the endpoint lifecycle (PUT / GET / DELETE), inference
calls and ``_ml/trained_models`` stats on top of a :class:`~infernetes.operator.store.Store`
(SQLite or custom resources), a :class:`~infernetes.operator.runtime.Runtime` (processes or
pods) and a :class:`~infernetes.operator.catalog.ModelCatalog`. The gateway is a thin HTTP layer
over it.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..worker.elastic_format import ES_TASK, Uploads
from ..worker.elastic_format import trained_model_config as elastic_trained_model_config
from ..worker.modelstore import ModelInfo
from .capacity import Capacity
from .catalog import ModelCatalog
from .errors import (
    BadRequest,
    CapacityExceeded,
    Conflict,
    ModelFailure,
    RequestTimeout,
    ResourceAlreadyExists,
    ResourceNotFound,
    ServiceUnavailable,
    ValidationFailed,
)
from .locks import KeyedLocks
from .default_endpoints import DEFAULTS, default_body, is_default, reserved_delete, reserved_put
from .records import Deployment, Endpoint
from .runtime import DeploymentStatus, Runtime
from pydantic import ValidationError

from .spec import (
    INPUT_TYPES,
    SERVICE,
    EndpointSpec,
    ServiceSettings,
    parse_endpoint,
    parse_task_settings,
    spec_errors,
    validate_model_id,
    validate_task_type,
)
from .store import Store

log = logging.getLogger("infernetes.service")


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 1024
    max_input_chars: int = 200_000
    queue_capacity: int = 1024


# -- rendering ------------------------------------------------------------------------------------


def render_service_settings(dep: Deployment | None, model: ModelInfo | None, ep: Endpoint) -> dict[str, Any]:
    if dep is None:  # the deployment an endpoint reused has gone
        return dict(ep.body.get("service_settings", {}))
    out: dict[str, Any] = {}
    if not dep.adaptive_enabled and dep.num_allocations is not None:
        out["num_allocations"] = dep.num_allocations
    out["num_threads"] = dep.num_threads
    out["model_id"] = dep.model_id
    out["deployment_id"] = dep.deployment_id
    if dep.adaptive:
        out["adaptive_allocations"] = dep.adaptive
    if ep.task_type == "text_embedding" and model is not None and model.dimensions:
        out["dimensions"] = model.dimensions
        out["similarity"] = model.similarity or "cosine"
        out["element_type"] = "float"
    return out


def render_endpoint(ep: Endpoint, dep: Deployment | None, model: ModelInfo | None) -> dict[str, Any]:
    spec = parse_endpoint(ep.task_type, ep.inference_id, ep.body)
    out: dict[str, Any] = {
        "inference_id": ep.inference_id,
        "task_type": ep.task_type,
        "service": SERVICE,
        "service_settings": render_service_settings(dep, model, ep),
        "chunking_settings": spec.chunking.resolved(),
    }
    task_settings = spec.task_settings()
    if task_settings:
        out["task_settings"] = task_settings
    return out


def _ep(inference_id: str) -> str:
    return "endpoint/" + inference_id


def _dep(deployment_id: str) -> str:
    return "deployment/" + deployment_id


def _map(value: Any, name: str) -> dict[str, Any]:
    """An object-valued setting of an update body: a JSON object, or null for none."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed([f"field [{name}] is not of the expected type. The value [{value}] cannot be "
                                "converted to a [Map]"])
    return value


def _matches(patterns: list[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


class InferenceService:
    # Endpoints looked up by inference calls are kept this long (writes through this service drop them at once;
    # in a cluster, kubectl edits show after at most this long).
    CACHE_SECONDS = 1.0
    # How long a change without a timeout of its own (DELETE, _stop, _update) waits for another change to the
    # same id: a DELETE drains for up to 30 s, plus the worker's shutdown.
    LOCK_WAIT_SECONDS = 60.0

    def __init__(self, store: Store, runtime: Runtime, catalog: ModelCatalog, limits: Limits | None = None,
                 capacity: Capacity | None = None) -> None:
        self.store = store
        self.runtime = runtime
        self.catalog = catalog
        self.limits = limits or Limits()
        # What the machine can run (the embedded runtime); None where a scheduler decides (Kubernetes).
        self.capacity = capacity
        self._cache: dict[str, tuple[float, Endpoint, EndpointSpec]] = {}
        # Changes to one endpoint or deployment run one at a time (see infernetes.operator.locks).
        self._locks = KeyedLocks()
        # Deployments in the store that could not be started (restore), with the reason: shown as failed.
        self._failed: dict[str, str] = {}

    async def _endpoint_for_inference(self, inference_id: str) -> tuple[Endpoint, EndpointSpec]:
        """The endpoint and its parsed spec, from a short-lived cache (the hot path does no store reads)."""
        hit = self._cache.get(inference_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.CACHE_SECONDS:
            return hit[1], hit[2]
        ep = await self.store.get_endpoint(inference_id)
        if ep is None and is_default(inference_id):
            ep = await self._create_default(inference_id)
        if ep is None:
            self._cache.pop(inference_id, None)
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        spec = parse_endpoint(ep.task_type, ep.inference_id, ep.body)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[inference_id] = (now, ep, spec)
        return ep, spec

    async def _create_default(self, inference_id: str) -> Endpoint | None:
        """A default endpoint on first use: created with its deployment (adaptive allocations from 0)."""
        task, _model = DEFAULTS[inference_id]
        try:
            await self.put_endpoint(task, inference_id, default_body(inference_id), self.DEFAULT_START_SECONDS,
                                    reserved=True)
        except ResourceAlreadyExists:  # another request created it meanwhile
            pass
        return await self.store.get_endpoint(inference_id)

    DEFAULT_START_SECONDS = 300.0

    def _forget(self, *inference_ids: str) -> None:
        for inference_id in inference_ids:
            self._cache.pop(inference_id, None)

    async def restore(self) -> None:
        """Bring every stored deployment back (after a restart of the server). One that cannot start (it no
        longer fits the machine, or its start fails) is marked failed with the reason; the others serve."""
        restored: list[Deployment] = []
        for dep in await self.store.list_deployments():
            try:
                async with self._locks.hold(_dep(dep.deployment_id)):
                    if self.capacity is not None:
                        self.capacity.admit(dep, restored)
                    await self.runtime.apply(dep)
                restored.append(dep)
            except CapacityExceeded as exc:
                self._failed[dep.deployment_id] = exc.reason
                log.error("deployment %s not restored: %s", dep.deployment_id, exc.reason)
            except Exception as exc:  # one broken deployment must not keep the others down
                self._failed[dep.deployment_id] = f"could not be restored: {type(exc).__name__}: {exc}"
                log.exception("could not restore deployment %s", dep.deployment_id)

    async def _admit(self, dep: Deployment) -> None:
        """Refuse up front (429, with what fits) a deployment the machine cannot run beside the others."""
        if self.capacity is not None:
            running = [d for d in await self.store.list_deployments() if d.deployment_id not in self._failed]
            self.capacity.admit(dep, running)

    def _status(self, deployment_id: str) -> DeploymentStatus:
        return self.runtime.status(deployment_id) or DeploymentStatus(
            deployment_id, target=0, failure=self._failed.get(deployment_id))

    async def _wait(self, deployment_id: str, timeout: float, *, fully: bool = True) -> DeploymentStatus:
        try:
            return await self.runtime.wait(deployment_id, timeout, fully=fully)
        except ResourceNotFound:  # removed meanwhile (a DELETE or _stop ran after the change)
            return DeploymentStatus(deployment_id, target=0, stopping=True)

    # -- endpoints ------------------------------------------------------------------------------

    async def put_endpoint(
        self, task_type: str | None, inference_id: str, body: Any, timeout: float, *, reserved: bool = False
    ) -> dict[str, Any]:
        if is_default(inference_id) and not reserved:
            raise BadRequest(reserved_put(inference_id))
        task_type = task_type or await self._task_from_body(body)
        spec = parse_endpoint(task_type, inference_id, body)
        async with self._hold(timeout, _ep(inference_id), _dep(spec.deployment_id)):
            if await self.store.get_endpoint(inference_id) is not None:
                raise ResourceAlreadyExists(f"Inference endpoint [{inference_id}] already exists")
            settings = spec.settings
            existing = await self.store.get_deployment(spec.deployment_id) if settings.deployment_id else None
            if existing is not None:
                dep, model = self._reuse(spec, existing)
                created = None
            else:
                if settings.model_id is None:
                    raise ResourceNotFound(
                        f"Could not find deployment [{spec.deployment_id}]; start it with "
                        f"POST _ml/trained_models/<model_id>/deployment/_start?deployment_id={spec.deployment_id} "
                        "or give [service_settings.model_id]"
                    )
                model = self._model_for(spec)
                dep = self._new_deployment(spec, model)
                await self._admit(dep)
                created = dep
            endpoint = Endpoint(
                inference_id=inference_id,
                task_type=task_type,
                deployment_id=dep.deployment_id,
                body=spec.body.model_dump(exclude_none=True),
            )
            await self.store.create(endpoint, created)
            self._forget(inference_id)
            if created is not None:
                self._failed.pop(created.deployment_id, None)
                await self.runtime.apply(created)
        if created is not None:
            status = await self._wait(created.deployment_id, timeout)
            if status.state == "failed":
                # The endpoint stays, in state [failed] with the reason, visible in GET and _stats.
                raise ModelFailure(
                    f"Could not start deployment [{created.deployment_id}] of model [{created.model_id}]: "
                    f"{status.failure}. The endpoint [{inference_id}] was kept in state [failed]: fix the cause, "
                    "then delete and create it again."
                )
            if status.state == "starting":
                doing = "to start"
                if status.download:
                    doing = f"to start (downloading the model: {status.download['percent']}%)"
                raise RequestTimeout(
                    f"Timed out after [{timeout:g}s] waiting for model deployment [{created.deployment_id}] "
                    f"{doing}. The endpoint was created and the deployment keeps starting: use "
                    f"GET _ml/trained_models/{created.deployment_id}/_stats to track it."
                )
        return render_endpoint(endpoint, dep, self.catalog.get(dep.model_id) or model)

    async def _task_from_body(self, body: Any) -> str:
        """``PUT _inference/{id}`` without a task type: take it from the model or deployment."""
        ss = body.get("service_settings") if isinstance(body, dict) else None
        if isinstance(ss, dict):
            model_id, deployment_id = ss.get("model_id"), ss.get("deployment_id")
            if isinstance(model_id, str) and (task := self.catalog.task_of(model_id)) is not None:
                return task
            if isinstance(deployment_id, str) and (dep := await self.store.get_deployment(deployment_id)):
                return dep.task_type
        raise BadRequest("task_type is required: use PUT _inference/{task_type}/{inference_id}")

    def _hold(self, timeout: float, *keys: str) -> Any:
        """The locks of the ids a change touches; waiting for them counts against the request's timeout."""
        return self._locks.hold(*keys, timeout=timeout, busy=(
            f"Another change to [{', '.join(k.split('/', 1)[1] for k in sorted(set(keys)))}] is still in progress "
            "(a DELETE or _stop drains running requests first); retry the request"))

    def _model_for(self, spec: EndpointSpec) -> ModelInfo | None:
        """The model an endpoint asks for; None while a built-in model still has to be downloaded."""
        model_id = spec.settings.model_id
        assert model_id is not None
        return self.catalog.check(model_id, spec.task_type, spec.inference_id)

    def _new_deployment(self, spec: EndpointSpec, model: ModelInfo | None) -> Deployment:
        return deployment_for(spec, self.limits.queue_capacity)

    def _reuse(self, spec: EndpointSpec, dep: Deployment) -> tuple[Deployment, ModelInfo | None]:
        s = spec.settings
        errors = []
        if s.model_id is not None and s.model_id != dep.model_id:
            errors.append(
                f"[model_id] [{s.model_id}] does not match the model [{dep.model_id}] of the existing "
                f"deployment [{dep.deployment_id}]"
            )
        if s.num_threads is not None and s.num_threads != dep.num_threads:
            errors.append(
                f"[num_threads] [{s.num_threads}] does not match the existing deployment "
                f"[{dep.deployment_id}] ([{dep.num_threads}])"
            )
        if s.num_allocations is not None and s.num_allocations != dep.num_allocations:
            errors.append(
                f"[num_allocations] [{s.num_allocations}] does not match the existing deployment "
                f"[{dep.deployment_id}] ([{dep.num_allocations}]); change it with the update API"
            )
        if errors:
            raise ValidationFailed(errors)
        if dep.task_type != spec.task_type:
            raise BadRequest(
                f"Deployment [{dep.deployment_id}] serves the [{dep.task_type}] task and cannot be used for the "
                f"[{spec.task_type}] task"
            )
        return dep, self.catalog.get(dep.model_id)

    async def get_endpoints(self, task_type: str | None = None, inference_id: str | None = None) -> list[dict[str, Any]]:
        if task_type is not None:
            validate_task_type(task_type)
        if inference_id is not None and inference_id not in ("_all", "*"):
            ep = await self.store.get_endpoint(inference_id)
            if ep is None and is_default(inference_id):
                ep = _default_endpoint(inference_id)
            if ep is None or (task_type is not None and ep.task_type != task_type):
                raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
            endpoints = [ep]
        else:
            endpoints = [e for e in await self.store.list_endpoints() if task_type in (None, e.task_type)]
            stored = {e.inference_id for e in endpoints}
            endpoints += [_default_endpoint(i) for i, (task, _m) in DEFAULTS.items()
                          if i not in stored and task_type in (None, task) and await self.store.get_endpoint(i) is None]
            endpoints.sort(key=lambda e: e.inference_id)
        out = []
        for ep in endpoints:
            dep = await self.store.get_deployment(ep.deployment_id)
            out.append(render_endpoint(ep, dep, self.catalog.get(dep.model_id) if dep else None))
        return out

    async def delete_endpoint(
        self, inference_id: str, task_type: str | None = None, *, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        if is_default(inference_id):
            raise BadRequest(reserved_delete(inference_id))
        ep = await self.store.get_endpoint(inference_id)
        if ep is None:
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        async with self._hold(self.LOCK_WAIT_SECONDS, _ep(inference_id), _dep(ep.deployment_id)):
            return await self._delete_endpoint(inference_id, task_type, force=force, dry_run=dry_run)

    async def _delete_endpoint(self, inference_id: str, task_type: str | None, *, force: bool,
                               dry_run: bool) -> dict[str, Any]:
        ep = await self.store.get_endpoint(inference_id)
        if ep is None:
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        if task_type is not None and task_type != ep.task_type:
            raise BadRequest(
                f"Requested task type [{task_type}] does not match the inference endpoint's task type "
                f"[{ep.task_type}]"
            )
        dep = await self.store.get_deployment(ep.deployment_id)
        owns = dep is not None and dep.owner == inference_id
        users = [
            e.inference_id for e in await self.store.list_endpoints()
            if e.deployment_id == ep.deployment_id and e.inference_id != inference_id
        ]
        if owns and users and not force:
            raise Conflict(
                f"Inference endpoint [{inference_id}] owns deployment [{ep.deployment_id}], which inference "
                f"endpoints [{', '.join(users)}] also use; delete them first or use ?force=true"
            )
        if dry_run:
            return {"acknowledged": False, "pipelines": [], "indexes": []}
        await self.store.delete_endpoint(inference_id, with_deployment=owns)
        self._forget(inference_id)
        if owns:
            self._failed.pop(ep.deployment_id, None)
            await self.runtime.remove(ep.deployment_id)
        return {"acknowledged": True, "pipelines": []}

    # -- inference ------------------------------------------------------------------------------

    async def infer(
        self, inference_id: str, task_type: str | None, body: Any, timeout: float, *, chunked: bool = False
    ) -> tuple[int, bytes, dict[str, str]]:
        ep, spec = await self._endpoint_for_inference(inference_id)
        if task_type is not None and task_type != ep.task_type:
            validate_task_type(task_type)
            raise BadRequest(
                f"Incompatible task_type, the requested type [{task_type}] does not match the inference "
                f"endpoint type [{ep.task_type}]"
            )
        payload = self.worker_request(ep, body, chunked=chunked, spec=spec)
        if timeout <= 0:
            # As Elasticsearch: a zero timeout has passed before the inference could run (never "no timeout").
            raise RequestTimeout(f"Timed out after [{timeout:g}s] waiting for inference on inference endpoint "
                                 f"[{inference_id}]; give a positive ?timeout=")
        try:
            return await self.runtime.infer(ep.deployment_id, payload, timeout)
        except ResourceNotFound:
            if ep.deployment_id in self._failed:
                raise ServiceUnavailable(f"deployment [{ep.deployment_id}] failed: {self._failed[ep.deployment_id]}",
                                         retry_after=30) from None
            raise ResourceNotFound(
                f"Inference endpoint [{inference_id}] refers to deployment [{ep.deployment_id}], which no longer "
                "exists"
            ) from None

    async def endpoint(self, inference_id: str) -> Endpoint:
        """An endpoint as inference calls see it (cached briefly); 404 when there is none."""
        return (await self._endpoint_for_inference(inference_id))[0]

    async def worker_call(self, ep: Endpoint, path: str, payload: bytes, timeout: float) -> tuple[int, bytes, dict[str, str]]:
        """Another request to an allocation of the endpoint's deployment: its model's tokenizer
        (``/tokenize``, ``/decode``, ``/token_ids``) or its manifest (``/info``)."""
        try:
            return await self.runtime.infer(ep.deployment_id, payload, timeout, path=path)
        except ResourceNotFound:
            raise ResourceNotFound(
                f"Inference endpoint [{ep.inference_id}] refers to deployment [{ep.deployment_id}], which no longer "
                "exists"
            ) from None

    def worker_request(self, ep: Endpoint, body: Any, *, chunked: bool = False,
                       spec: EndpointSpec | None = None) -> bytes:
        """Validate an inference body and merge it with the endpoint's task settings."""
        spec = spec or parse_endpoint(ep.task_type, ep.inference_id, ep.body)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        task = ep.task_type
        allowed = {"input", "input_type", "task_settings", "timeout"}
        if task == "rerank":
            allowed |= {"query", "return_documents", "top_n"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(f"[{task}] inference request contains unknown fields [{', '.join(unknown)}]")
        if "input" not in body:
            example = ('"query": "...", "input": ["a document", "another"]' if task == "rerank"
                       else '"input": "some text" (or an array of texts)')
            raise ValidationFailed([f"[{task}] inference request is missing [input]: add {example} to the body"])
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise ValidationFailed(["[input] must be a string or an array of strings"])
        if not inputs:
            raise ValidationFailed(["[input] must not be empty"])
        if len(inputs) > self.limits.max_inputs:
            raise ValidationFailed(
                [f"[input] has {len(inputs)} entries; at most {self.limits.max_inputs} are allowed per request"]
            )
        too_long = [i for i, x in enumerate(inputs) if len(x) > self.limits.max_input_chars]
        if too_long:
            raise ValidationFailed(
                [f"[input] entry [{too_long[0]}] is longer than {self.limits.max_input_chars} characters"]
            )
        stored = spec.task_settings()
        request_ts = parse_task_settings(task, body["task_settings"]).model_dump(exclude_none=True) \
            if body.get("task_settings") is not None else {}
        merged = {**stored, **request_ts}
        out: dict[str, Any] = {"input": inputs}
        if task == "rerank":
            query = body.get("query")
            if not isinstance(query, str):
                raise ValidationFailed(["[query] is required for the [rerank] task and must be a string"])
            if len(query) > self.limits.max_input_chars:
                raise ValidationFailed([f"[query] is longer than {self.limits.max_input_chars} characters"])
            out["query"] = query
            for name, kind in (("return_documents", bool), ("top_n", int)):
                if name in body:
                    value = body[name]
                    if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
                        raise ValidationFailed([f"[{name}] must be a {'boolean' if kind is bool else 'positive integer'}"])
                    merged[name] = value
            out["return_documents"] = merged.get("return_documents", True)
            if merged.get("top_n") is not None:
                out["top_n"] = merged["top_n"]
            if "input_type" in body:
                raise BadRequest("[input_type] is not applicable to the [rerank] task")
        else:
            input_type = body.get("input_type", merged.get("input_type"))
            if input_type is not None:
                out["input_type"] = _input_type(input_type)
        if chunked:
            if task == "rerank":
                raise BadRequest("chunked inference does not apply to the [rerank] task")
            out["chunking"] = spec.chunking.resolved()
        return orjson.dumps(out)

    # -- deployments on their own (_ml/trained_models/{id}/deployment/...) ------------------------

    async def start_deployment(
        self,
        model_id: str,
        *,
        deployment_id: str | None = None,
        number_of_allocations: int | None = None,
        threads_per_allocation: int = 1,
        queue_capacity: int | None = None,
        priority: str = "normal",
        adaptive: dict[str, Any] | None = None,
        wait_for: str = "started",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        deployment_id = deployment_id or model_id
        _check_types(deployment_id=(deployment_id, str), priority=(priority, str), wait_for=(wait_for, str),
                     number_of_allocations=(number_of_allocations, int), queue_capacity=(queue_capacity, int),
                     threads_per_allocation=(threads_per_allocation, int), adaptive_allocations=(adaptive, dict))
        validate_model_id(deployment_id, "deployment_id")
        settings = _deployment_settings(number_of_allocations, threads_per_allocation, adaptive, queue_capacity,
                                        priority, wait_for)
        task = self.catalog.task_of(model_id)
        if task is None or (self.catalog.get(model_id) is None and not self.catalog.downloadable(model_id)):
            self.catalog.resolve(model_id)  # the 404, with how to import it
        dep = Deployment(
            deployment_id=deployment_id,
            model_id=model_id,
            task_type=task or "",
            num_threads=threads_per_allocation,
            num_allocations=None if settings.adaptive else (number_of_allocations or 1),
            adaptive=adaptive,
            owner=None,
            queue_capacity=queue_capacity or self.limits.queue_capacity,
            priority=priority,
        )
        async with self._hold(timeout, _dep(deployment_id)):
            await self._admit(dep)
            await self.store.create(None, dep)
            self._failed.pop(deployment_id, None)
            await self.runtime.apply(dep)
        if wait_for != "starting":
            status = await self._wait(deployment_id, timeout, fully=wait_for == "fully_allocated")
            if status.state == "failed":
                async with self._hold(self.LOCK_WAIT_SECONDS, _dep(deployment_id)):
                    current = await self.store.get_deployment(deployment_id)
                    if current is not None and current.created == dep.created:  # still the one this call made
                        await self.store.delete_deployment(deployment_id)
                        await self.runtime.remove(deployment_id)
                raise ModelFailure(f"Could not start deployment [{deployment_id}] of model [{model_id}]: "
                                   f"{status.failure}")
            reached = status.allocation_state == "fully_allocated" if wait_for == "fully_allocated" else \
                status.state == "started"
            if not reached:
                raise RequestTimeout(
                    f"Timed out after [{timeout:g}s] waiting for model deployment [{deployment_id}] to be "
                    f"[{wait_for}]; it keeps starting: use GET _ml/trained_models/{deployment_id}/_stats to track it"
                )
        return {"assignment": self.assignment(dep)}

    async def _deployment(self, id_: str) -> Deployment:
        dep = await self.store.get_deployment(id_)
        if dep is None:
            matches = [d for d in await self.store.list_deployments() if d.model_id == id_]
            if len(matches) == 1:
                dep = matches[0]
        if dep is None:
            raise ResourceNotFound(f"No known model deployment with id [{id_}]")
        return dep

    async def stop_deployment(self, id_: str, *, force: bool = False) -> dict[str, Any]:
        dep = await self._deployment(id_)
        async with self._hold(self.LOCK_WAIT_SECONDS, _dep(dep.deployment_id)):
            return await self._stop_deployment(dep.deployment_id, force=force)

    async def _stop_deployment(self, deployment_id: str, *, force: bool) -> dict[str, Any]:
        dep = await self._deployment(deployment_id)
        users = [e.inference_id for e in await self.store.list_endpoints() if e.deployment_id == dep.deployment_id]
        if users and not force:
            raise Conflict(
                f"Cannot stop deployment [{dep.deployment_id}] as it is used by inference endpoints "
                f"[{', '.join(users)}]; delete the endpoints first, or use ?force=true"
            )
        for inference_id in users:
            await self.store.delete_endpoint(inference_id, with_deployment=False)
        self._forget(*users)
        await self.store.delete_deployment(dep.deployment_id)
        self._failed.pop(dep.deployment_id, None)
        await self.runtime.remove(dep.deployment_id)
        return {"stopped": True}

    async def update_deployment(
        self, id_: str, *, number_of_allocations: int | None = None, adaptive: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> Deployment:
        dep = await self._deployment(id_)
        async with self._hold(self.LOCK_WAIT_SECONDS, _dep(dep.deployment_id)):
            return await self._update_deployment(dep.deployment_id, number_of_allocations=number_of_allocations,
                                                 adaptive=adaptive, threads=threads)

    async def _update_deployment(
        self, deployment_id: str, *, number_of_allocations: Any = None, adaptive: Any = None, threads: Any = None,
    ) -> Deployment:
        dep = await self._deployment(deployment_id)
        _check_types(number_of_allocations=(number_of_allocations, int), num_threads=(threads, int),
                     adaptive_allocations=(adaptive, dict))
        if threads is not None and threads != dep.num_threads:
            raise ValidationFailed(["[num_threads] cannot be updated"])
        if number_of_allocations is None and adaptive is None:
            raise ValidationFailed(["[number_of_allocations] or [adaptive_allocations] must be given"])
        _deployment_settings(number_of_allocations, dep.num_threads, adaptive, None, dep.priority, "started")
        if adaptive is not None and adaptive.get("enabled"):
            updated = dep.with_(num_allocations=None, adaptive=adaptive)
        else:
            updated = dep.with_(num_allocations=number_of_allocations or dep.num_allocations or 1,
                                adaptive=adaptive if adaptive is not None else None)
        if self.capacity is not None:
            others = [d for d in await self.store.list_deployments()
                      if d.deployment_id != dep.deployment_id and d.deployment_id not in self._failed]
            self.capacity.admit(updated, others)
        await self.store.update_deployment(updated)
        self._failed.pop(updated.deployment_id, None)
        await self.runtime.apply(updated)
        return updated

    async def update_endpoint(self, task_type: str | None, inference_id: str, body: Any) -> dict[str, Any]:
        """Elasticsearch's ``PUT _inference/{task_type}/{id}/_update``: allocations only."""
        ep = await self.store.get_endpoint(inference_id)
        if ep is None:
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        async with self._hold(self.LOCK_WAIT_SECONDS, _ep(inference_id), _dep(ep.deployment_id)):
            return await self._update_endpoint(task_type, inference_id, body)

    async def _update_endpoint(self, task_type: str | None, inference_id: str, body: Any) -> dict[str, Any]:
        ep = await self.store.get_endpoint(inference_id)
        if ep is None:
            raise ResourceNotFound(f"Inference endpoint not found [{inference_id}]")
        if task_type is not None and task_type != ep.task_type:
            raise BadRequest(f"Requested task type [{task_type}] does not match the inference endpoint's task type "
                             f"[{ep.task_type}]")
        if not isinstance(body, dict) or set(body) - {"service_settings", "task_settings"}:
            raise BadRequest("only [service_settings] and [task_settings] can be updated")
        ss = _map(body.get("service_settings"), "service_settings")
        unknown = set(ss) - {"num_allocations", "adaptive_allocations", "num_threads"}
        if unknown:
            raise ValidationFailed([f"[service_settings.{n}] cannot be updated" for n in sorted(unknown)])
        new_body = dict(ep.body)
        if "task_settings" in body:
            new_body["task_settings"] = {**ep.body.get("task_settings", {}),
                                         **_map(body["task_settings"], "task_settings")}
            parse_endpoint(ep.task_type, inference_id, new_body)
        if ss:
            _check_types(num_allocations=(ss.get("num_allocations"), int), num_threads=(ss.get("num_threads"), int),
                         adaptive_allocations=(ss.get("adaptive_allocations"), dict))
            dep = await self._update_deployment(ep.deployment_id, number_of_allocations=ss.get("num_allocations"),
                                                adaptive=ss.get("adaptive_allocations"), threads=ss.get("num_threads"))
            settings = dict(new_body["service_settings"])
            settings.pop("num_allocations", None)
            settings.pop("adaptive_allocations", None)
            if dep.num_allocations is not None:
                settings["num_allocations"] = dep.num_allocations
            if dep.adaptive is not None:
                settings["adaptive_allocations"] = dep.adaptive
            new_body["service_settings"] = settings
        updated = Endpoint(ep.inference_id, ep.task_type, ep.deployment_id, new_body, ep.created)
        await self.store.replace_endpoint(updated)
        self._forget(inference_id)
        dep = await self.store.get_deployment(ep.deployment_id)
        return render_endpoint(updated, dep, self.catalog.get(dep.model_id) if dep else None)

    def assignment(self, dep: Deployment) -> dict[str, Any]:
        status = self._status(dep.deployment_id)
        model = self.catalog.get(dep.model_id)
        out: dict[str, Any] = {
            "task_parameters": {
                "model_id": dep.model_id,
                "deployment_id": dep.deployment_id,
                "model_bytes": model.size_bytes if model else 0,
                "threads_per_allocation": dep.num_threads,
                "number_of_allocations": status.target,
                "queue_capacity": dep.queue_capacity,
                "priority": dep.priority,
                "cache_size": "0b",
            },
            "assignment_state": status.state,
            "routing_table": {
                f"allocation-{a.allocation_id}": {"current_allocations": 1 if a.state == "started" else 0,
                                                  "target_allocations": 1, "routing_state": a.state}
                for a in status.allocations
            },
            "start_time": int((status.started_at or dep.created) * 1000),
            "max_assigned_allocations": max(status.ready, status.target),
        }
        if dep.adaptive:
            out["adaptive_allocations"] = dep.adaptive
        if status.failure:
            out["reason"] = status.failure
        return out

    async def trained_models(self, model_ids: str | None) -> dict[str, Any]:
        """``GET _ml/trained_models[/{id}]``: the configuration of models in the store."""
        patterns = ["*" if p in ("_all", "") else p for p in (model_ids or "_all").split(",")]
        models = [m for m in self.catalog.list() if _matches(patterns, m.model_id)]
        # Elastic-format models still being uploaded (Eland): listed, not yet fully defined.
        store = getattr(self.catalog, "store", None)
        pending = [c for c in (Uploads(store).pending() if store is not None else [])
                   if _matches(patterns, c["model_id"])]
        missing = [p for p in patterns if "*" not in p and p not in {m.model_id for m in models}
                   and p not in {c["model_id"] for c in pending}]
        if missing:
            raise ResourceNotFound(f"Could not find trained model [{','.join(missing)}]")
        configs = []
        for m in models:
            if m.backend == "elastic":
                configs.append(elastic_trained_model_config(m))
                continue
            task_config: dict[str, Any] = {"tokenization": {"max_sequence_length": m.max_seq_length}}
            if m.dimensions and m.task_type == "text_embedding":
                task_config["embedding_size"] = m.dimensions
            configs.append({
                "model_id": m.model_id,
                "model_type": "pytorch",
                "created_by": "infernetes",
                "create_time": int(m.created * 1000),
                "model_size_bytes": m.size_bytes,
                "description": f"{m.kind} model imported from {m.source}",
                "inference_config": {ES_TASK.get(m.task_type, m.task_type): task_config},
                "fully_defined": True,
                "location": {"index": {"name": ".ml-inference-native-000002"}},
                "tags": [],
            })
        configs.extend(pending)
        return {"count": len(configs), "trained_model_configs": configs}

    # -- trained models -------------------------------------------------------------------------

    async def trained_model_stats(self, model_ids: str | None) -> dict[str, Any]:
        patterns = [p for p in (model_ids or "_all").split(",") if p] or ["_all"]
        patterns = ["*" if p == "_all" else p for p in patterns]
        deployments = [d for d in await self.store.list_deployments() if _matches(patterns, d.model_id, d.deployment_id)]
        models = {m.model_id: m for m in self.catalog.list()}
        deployed = {d.model_id for d in deployments}
        stats = []
        for dep in deployments:
            stats.append(await self._deployment_entry(dep, models.get(dep.model_id)))
        for model_id, model in sorted(models.items()):
            if model_id not in deployed and _matches(patterns, model_id):
                stats.append(self._model_entry(model))
        explicit = [p for p in patterns if "*" not in p]
        found = {s["model_id"] for s in stats} | {s.get("deployment_stats", {}).get("deployment_id") for s in stats}
        missing = [p for p in explicit if p not in found]
        if missing:
            raise ResourceNotFound(f"Could not find trained model [{','.join(missing)}]")
        return {"count": len(stats), "trained_model_stats": stats}

    def _model_entry(self, model: ModelInfo | None, model_id: str = "") -> dict[str, Any]:
        size = model.size_bytes if model else 0
        return {
            "model_id": model.model_id if model else model_id,
            "model_size_stats": {"model_size_bytes": size, "required_native_memory_bytes": size * 2},
            "pipeline_count": 0,
            "inference_stats": {
                "failure_count": 0, "inference_count": 0, "cache_miss_count": 0, "missing_all_fields_count": 0,
                "timestamp": int(time.time() * 1000),
            },
        }

    async def _deployment_entry(self, dep: Deployment, model: ModelInfo | None) -> dict[str, Any]:
        entry = self._model_entry(model, dep.model_id)
        status = self._status(dep.deployment_id)
        nodes = await self.runtime.node_stats(dep.deployment_id)
        entry["deployment_stats"] = deployment_stats(dep, status, nodes)
        entry["inference_stats"]["inference_count"] = entry["deployment_stats"]["inference_count"]
        return entry


def _default_endpoint(inference_id: str) -> Endpoint:
    """A default endpoint not created yet, as GET shows it (no deployment until first use)."""
    task, _model = DEFAULTS[inference_id]
    return Endpoint(inference_id=inference_id, task_type=task, deployment_id=inference_id,
                    body=default_body(inference_id))


def deployment_for(spec: EndpointSpec, queue_capacity: int) -> Deployment:
    """The deployment an endpoint creates for itself (named after it unless deployment_id says otherwise)."""
    s = spec.settings
    errors = []
    if s.num_threads is None:
        errors.append("[service_settings] does not contain the required setting [num_threads]")
    if s.num_allocations is None and s.adaptive_allocations is None:
        errors.append(
            "[service_settings] does not contain one of the required settings [num_allocations, adaptive_allocations]"
        )
    if errors:
        raise ValidationFailed(errors)
    return Deployment(
        deployment_id=spec.deployment_id,
        model_id=s.model_id or "",
        task_type=spec.task_type,
        num_threads=s.num_threads or 1,
        num_allocations=None if s.adaptive else s.num_allocations,
        adaptive=s.adaptive_allocations.model_dump(exclude_none=True) if s.adaptive_allocations else None,
        owner=spec.inference_id,
        queue_capacity=queue_capacity,
    )


def _deployment_settings(
    allocations: int | None, threads: int, adaptive: dict[str, Any] | None, queue_capacity: int | None,
    priority: str, wait_for: str,
) -> ServiceSettings:
    """Check the _start / _update parameters with the same rules as an endpoint's service settings."""
    errors = []
    if priority not in ("normal", "low"):
        errors.append(f"[priority] must be one of [normal, low], got [{priority}]")
    if wait_for not in ("starting", "started", "fully_allocated"):
        errors.append(f"[wait_for] must be one of [starting, started, fully_allocated], got [{wait_for}]")
    if queue_capacity is not None and not 1 <= queue_capacity <= 1_000_000:
        errors.append(f"[queue_capacity] must be between 1 and 1000000, got [{queue_capacity}]")
    if errors:
        raise ValidationFailed(errors)
    raw: dict[str, Any] = {"model_id": "m", "num_threads": threads}
    if allocations is not None:
        raw["num_allocations"] = allocations
    if adaptive is not None:
        raw["adaptive_allocations"] = adaptive
    if allocations is None and adaptive is None:
        raw["num_allocations"] = 1
    try:
        return ServiceSettings.model_validate(raw)
    except ValidationError as exc:
        messages = [m.replace("[num_threads]", "[threads_per_allocation]").replace(
            "[num_allocations]", "[number_of_allocations]") for m in spec_errors(exc)]
        raise ValidationFailed(messages) from None


_JAVA_TYPES = {str: "String", int: "Integer", dict: "Map", bool: "Boolean"}


def _check_types(**values: tuple[Any, type]) -> None:
    """Parameters taken from a JSON body: each absent (None) or of its type, as Elasticsearch's parsers insist
    (1.5 is no integer, true is no number, 5 is no id)."""
    errors = []
    for name, (value, kind) in values.items():
        if value is None:
            continue
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong:
            errors.append(f"field [{name}] is not of the expected type. The value [{value}] cannot be converted to "
                          f"a [{_JAVA_TYPES[kind]}]")
    if errors:
        raise ValidationFailed(errors)


def _input_type(value: Any) -> str:
    if isinstance(value, str):
        upper = value.upper()
        upper = {"INTERNAL_SEARCH": "SEARCH", "INTERNAL_INGEST": "INGEST"}.get(upper, upper)
        if upper in INPUT_TYPES:
            return upper
    raise ValidationFailed(
        [f"[input_type] has an invalid value [{value}]; expected one of [{', '.join(INPUT_TYPES)}]"]
    )


def deployment_stats(dep: Deployment, status: DeploymentStatus, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Elasticsearch's ``deployment_stats`` object for one deployment."""
    node_entries = []
    for n in nodes:
        routing = {"routing_state": n.get("state", "starting")}
        if n.get("failure"):
            routing["reason"] = n["failure"]
        node_entries.append(
            {
                "node": {f"allocation-{n['allocation_id']}": {"name": f"{dep.deployment_id}-{n['allocation_id']}",
                                                           "roles": ["ml"], "attributes": {}}},
                "routing_state": routing,
                "inference_count": n.get("inference_count", 0),
                "average_inference_time_ms": n.get("average_inference_time_ms", 0.0),
                "average_inference_time_ms_excluding_cache_hits": n.get("average_inference_time_ms", 0.0),
                "inference_cache_hit_count": 0,
                "number_of_pending_requests": n.get("number_of_pending_requests", 0),
                "error_count": n.get("error_count", 0),
                "rejected_execution_count": n.get("rejected_execution_count", 0),
                "timeout_count": 0,
                "last_access": n.get("last_access"),
                "number_of_allocations": 1,
                "threads_per_allocation": dep.num_threads,
                "start_time": n.get("start_time"),
                "restart_count": n.get("restarts", 0),
            }
        )
    out: dict[str, Any] = {
        "deployment_id": dep.deployment_id,
        "model_id": dep.model_id,
        "threads_per_allocation": dep.num_threads,
        "number_of_allocations": status.target,
        "queue_capacity": dep.queue_capacity,
        "state": status.state,
        "allocation_status": {"allocation_count": status.ready, "target_allocation_count": status.target,
                              "state": status.allocation_state},
        "cache_size": "0b",
        "priority": dep.priority,
        "start_time": int((status.started_at or dep.created) * 1000),
        "inference_count": sum(n.get("inference_count", 0) for n in nodes),
        "peak_throughput_per_minute": 0,
        "nodes": node_entries,
    }
    if status.state not in ("starting", "started"):
        # As Elasticsearch: allocation_status only while the deployment is starting or started, never next to
        # "failed" or "stopping" (its states are starting | started | fully_allocated).
        del out["allocation_status"]
    if dep.adaptive:
        out["adaptive_allocations"] = dep.adaptive
    if status.failure:
        out["reason"] = status.failure
    if status.download:
        out["model_download"] = status.download
    return out
