"""The HTTP face of the box: Kubernetes REST paths, watches, discovery and OpenAPI v3."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
from typing import Any

import yaml
from aiohttp import web

from . import openapi, patching, tables, wire
from .rbac import User
from .resources import REVIEWS, Resource
from .schema import KUBE_VERSION
from .selection import SelectorError, field_selector, label_selector, selector_string
from .server import ApiError, ApiServer, Request, Watcher, _details, _get_dotted, _set_dotted, conflict, not_found

_MERGE = "application/merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_SMP = "application/strategic-merge-patch+json"
_APPLY = "application/apply-patch+yaml"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", headers=headers)


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code, exc.headers)


class Routes:
    def __init__(self, server: ApiServer):
        self.s = server

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - the box must answer like a server, never with a trace
            import traceback
            traceback.print_exc()
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {type(exc).__name__}: {exc}"))

    # ---- authentication ----

    def _user(self, request: web.Request) -> User:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if token and token == self.s.admin_token:
            return User("admin", ("system:masters", "system:authenticated"))
        if token and token in self.s.tokens:
            return self.s.tokens[token]
        raise ApiError(401, "Unauthorized", "Unauthorized")

    # ---- dispatch ----

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        user = self._user(request)
        parts = [p for p in path.split("/") if p]
        if path in ("/version", "/healthz", "/livez", "/readyz") or path == "/":
            if path == "/version":
                major, minor, _ = KUBE_VERSION.split(".")
                return _json({"major": major, "minor": minor, "gitVersion": f"v{KUBE_VERSION}", "platform": "linux/amd64",
                              "goVersion": "clusterbox", "compiler": "gc", "gitCommit": "clusterbox", "gitTreeState": "clean",
                              "buildDate": "2026-01-01T00:00:00Z"})
            if path == "/":
                return _json({"paths": ["/api", "/apis", "/openapi/v3", "/version"]})
            return web.Response(text="ok")
        if parts[0] == "openapi":
            return self._openapi(parts[1:], request)
        if parts[0] == "api":
            if len(parts) == 1:
                return _json({"kind": "APIVersions", "versions": ["v1"],
                              "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return _json(self._group_list())
            if len(parts) == 2:
                return self._group(parts[1])
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return self._resource_list(group, version)
        return await self._resource_request(request, user, group, version, rest)

    def _parse(self, group: str, version: str, rest: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
        def lookup(plural: str) -> Resource:
            res = self.s.resources.get((group, version, plural))
            if res is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return res
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in self.s.resources \
                and self.s.resources[(group, version, rest[2])].namespaced:
            res = lookup(rest[2])
            return res, rest[1], rest[3] if len(rest) > 3 else None, rest[4] if len(rest) > 4 else None
        res = lookup(rest[0])
        return res, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None

    async def _resource_request(self, request: web.Request, user: User, group: str, version: str,
                                rest: list[str]) -> web.StreamResponse:
        res, namespace, name, sub = self._parse(group, version, rest)
        pod_log = sub == "log" and res.key == ("", "pods") and getattr(self.s, "kubelet", None) is not None
        if sub is not None and not ((sub == "status" and res.status) or (sub == "scale" and res.scale) or pod_log):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = request.query
        watch = q.get("watch") in ("true", "1")
        method = request.method
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        if method == "POST" and name is not None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self.s.requests.append((verb, res.plural, user.name))
        fault = self.s.faults.take(res.plural, verb)
        if fault is not None:
            if fault.kind == "429":
                raise ApiError(429, "TooManyRequests", "the server has received too many requests and has asked us to try again later",
                               {"retryAfterSeconds": fault.retry_after}, {"Retry-After": str(fault.retry_after)})
            if fault.kind == "500":
                raise ApiError(500, "InternalError", "Internal error occurred: injected fault")
            await asyncio.sleep(fault.delay)
        if res.key == REVIEWS:
            return await self._review(request, user, verb)
        if res.namespaced and namespace is None and verb not in ("list", "watch"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._authorize(user, verb, res, namespace, name, sub)
        if pod_log:
            if verb != "get":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return await self._pod_log(request, namespace or "", name or "")
        agent = request.headers.get("User-Agent", "")
        rq = Request(res, namespace, name, sub, verb, user, agent.split("/", 1)[0].split(" ", 1)[0] if agent else "unknown")
        if verb == "watch":
            return await self._watch(request, rq)
        as_table = rq.res.is_crd and tables.wants_table(request.headers.get("Accept", "")) and sub is None
        if verb == "list":
            listing = self._list(rq, q)
            if as_table:
                return _json(tables.table(res, listing["items"], listing["metadata"], q.get("includeObject", "Metadata")))
            return _json(listing)
        if verb == "get":
            got = self._get(rq)
            if as_table:
                return _json(tables.table(res, [got], {"resourceVersion": got["metadata"]["resourceVersion"]},
                                          q.get("includeObject", "Metadata")))
            return _json(got)
        body = await request.read()
        if verb == "create":
            return self._create(rq, q, self._body(body, request.content_type))
        if verb == "update":
            return self._update(rq, q, self._body(body, request.content_type))
        if verb == "patch":
            return self._patch(rq, q, body, request.content_type)
        if verb == "delete":
            return _json(self._delete(rq, q, self._body(body, request.content_type) if body else {}))
        return _json(self._delete_collection(rq, q))

    async def _pod_log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        """GET pods/{name}/log (`kubectl logs`): container, previous, tailLines, limitBytes, follow."""
        q = request.query
        path, container = self.s.kubelet.log_file(namespace, name, q.get("container"), q.get("previous") in ("true", "1"))  # type: ignore[attr-defined]
        try:
            tail = int(q["tailLines"]) if "tailLines" in q else None
            limit = int(q["limitBytes"]) if "limitBytes" in q else None
        except ValueError:
            raise ApiError(400, "BadRequest", "tailLines and limitBytes must be integers") from None
        data = path.read_bytes() if path.exists() else b""
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
        if limit is not None:
            data = data[:limit]
        if q.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain", "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        await response.write(data)
        offset = path.stat().st_size if path.exists() else 0
        try:
            while True:  # until this container instance ends (or the client goes away)
                done = container.proc is None or container.log != path
                chunk = b""
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                if chunk:
                    offset += len(chunk)
                    await response.write(chunk)
                if done:
                    break
                await asyncio.sleep(0.1)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _review(self, request: web.Request, user: User, verb: str) -> web.Response:
        if verb != "create":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        raw = await request.read()
        if request.content_type == "application/vnd.kubernetes.protobuf":
            try:
                review: Any = wire.access_review(raw)
            except (ValueError, IndexError, UnicodeDecodeError) as exc:
                raise ApiError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None
        else:
            review = self._body(raw, request.content_type)
        attrs = (review.get("spec") or {}).get("resourceAttributes") if isinstance(review, dict) else None
        if isinstance(review, dict) and (review.get("spec") or {}).get("nonResourceAttributes"):
            review["status"] = {"allowed": True}  # discovery and health paths are open to every authenticated user here
            return _json(review, 201)
        if not isinstance(attrs, dict):
            raise ApiError(422, "Invalid", "SelfSubjectAccessReview.authorization.k8s.io is invalid: spec.resourceAttributes: Required value")
        target = next((r for r in self.s.resources.values()
                       if r.group == attrs.get("group", "") and r.plural == attrs.get("resource")), None)
        allowed = target is not None and self.s.authorizer.allowed(
            user, attrs.get("verb", ""), target, attrs.get("namespace") or None, attrs.get("name") or None, attrs.get("subresource") or None)
        review["status"] = {"allowed": allowed}
        review.setdefault("metadata", {})["creationTimestamp"] = None
        return _json(review, 201)

    def _authorize(self, user: User, verb: str, res: Resource, namespace: str | None, name: str | None, sub: str | None) -> None:
        if self.s.authorizer.allowed(user, verb, res, namespace, name, sub):
            return
        scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        full = f"{res.plural}/{sub}" if sub else res.plural
        named = f' "{name}"' if name else ""
        raise ApiError(403, "Forbidden", f'{res.group_resource}{named} is forbidden: User "{user.name}" cannot {verb} resource '
                       f'"{full}" in API group "{res.group}"{scope}', _details(res, name))

    @staticmethod
    def _body(raw: bytes, content_type: str) -> Any:
        if raw and not ("json" in content_type or "yaml" in content_type or content_type in ("", "application/octet-stream", "text/plain")):
            # protobuf and CBOR are not spoken here; client-go falls back to JSON on a 415.
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: "
                           "application/json, application/yaml")
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw)
            return json.loads(raw or b"{}")
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"the body of the request could not be decoded: {exc}") from None

    # ---- reads ----

    def _visible(self, rq: Request, q: Any) -> list[dict[str, Any]]:
        res = rq.res
        try:
            lmatch = label_selector(q.get("labelSelector", ""))
            fmatch = field_selector(q.get("fieldSelector", ""), res.field_labels)
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        items = [o for (ns, _), o in self.s.objects[res.key].items() if rq.namespace is None or ns == rq.namespace]
        items = [o for o in items if lmatch(o["metadata"].get("labels") or {}) and fmatch(o)]
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def _out(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if res.api_version != obj.get("apiVersion"):
            out["apiVersion"] = res.api_version
        return out

    def _list(self, rq: Request, q: Any) -> dict[str, Any]:
        res = rq.res
        items = self._visible(rq, q)
        rv = str(self.s.rv)
        cont = q.get("continue")
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                start, rv = tuple(token["start"]), token["rv"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid") from None
            if int(rv) < self.s.compacted:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent list result. "
                               "You can start a new list without the continue parameter.")
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start]
        meta: dict[str, Any] = {"resourceVersion": rv}
        limit = int(q.get("limit", "0") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": [last.get("namespace", ""), last["name"]], "rv": rv}).encode()).decode()
            meta["remainingItemCount"] = len(self._visible(rq, q)) - limit
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                "items": [self._out(res, o) for o in items]}

    def _existing(self, rq: Request) -> dict[str, Any]:
        obj = self.s.get(rq.res, rq.namespace, rq.name or "")
        if obj is None:
            raise not_found(rq.res, rq.name or "")
        return obj

    def _get(self, rq: Request) -> dict[str, Any]:
        obj = self._existing(rq)
        if rq.subresource == "scale":
            return self._scale_of(rq.res, obj)
        return self._out(rq.res, obj)

    def _scale_of(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        assert res.scale is not None
        replicas = _get_dotted(obj, res.scale.spec_path)
        status_replicas = _get_dotted(obj, res.scale.status_path)
        selector = _get_dotted(obj, res.scale.selector_path) if res.scale.selector_path else None
        if not res.is_crd:
            selector = selector_string((obj.get("spec") or {}).get("selector"))
        meta = {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in obj["metadata"]}
        status: dict[str, Any] = {"replicas": int(status_replicas or 0)}
        if selector:
            status["selector"] = selector
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": meta,
                "spec": {"replicas": int(replicas or 0)}, "status": status}

    # ---- writes ----

    @staticmethod
    def _opts(q: Any) -> tuple[str | None, bool, bool]:
        validation = q.get("fieldValidation", "Warn")
        if validation not in ("Ignore", "Warn", "Strict"):
            raise ApiError(400, "BadRequest", f"fieldValidation must be one of Ignore, Warn, Strict, got {validation}")
        dry = q.get("dryRun") == "All"
        return q.get("fieldManager"), validation == "Strict", dry

    @staticmethod
    def _written(obj: dict[str, Any], status: int, warnings: list[str], res: Resource) -> web.Response:
        headers = {}
        if warnings:
            headers["Warning"] = ", ".join(f'299 - "{w}"' for w in warnings[:10])
        return _json(obj, status, headers)

    def _manager(self, q: Any, default: str) -> str:
        return q.get("fieldManager") or default

    def _create(self, rq: Request, q: Any, body: Any) -> web.Response:
        if rq.subresource:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        manager, strict, dry = self._opts(q)
        if isinstance(body, dict):
            name = (body.get("metadata") or {}).get("name")
            if name and self.s.get(rq.res, rq.namespace, name) is not None:
                raise ApiError(409, "AlreadyExists", f'{rq.res.group_resource} "{name}" already exists', _details(rq.res, name))
        obj, warnings = self.s.admit(rq, None, body, manager or rq.agent, strict, dry_run=dry)
        return self._written(self._out(rq.res, obj), 201, warnings, rq.res)

    def _update(self, rq: Request, q: Any, body: Any) -> web.Response:
        manager, strict, dry = self._opts(q)
        old = self._existing(rq)
        if rq.subresource == "scale":
            return _json(self._write_scale(rq, old, body, dry, manager or rq.agent))
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        obj, warnings = self.s.admit(rq, old, body, manager or rq.agent, strict, dry_run=dry)
        return self._written(self._out(rq.res, obj), 200, warnings, rq.res)

    def _write_scale(self, rq: Request, old: dict[str, Any], scale: Any, dry: bool, manager: str) -> dict[str, Any]:
        res = rq.res
        if not isinstance(scale, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a Scale object")
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(res, rq.name or "")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{rq.name}" is invalid: spec.replicas: Invalid value: {json.dumps(replicas)}: '
                           "must be greater than or equal to 0", {"name": rq.name, "group": "autoscaling", "kind": "Scale",
                                                                   "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas",
                                                                               "message": "must be greater than or equal to 0"}]})
        new = copy.deepcopy(old)
        assert res.scale is not None
        _set_dotted(new, res.scale.spec_path, replicas)
        main = Request(res, rq.namespace, rq.name, None, "update", rq.user)
        obj, _ = self.s.admit(main, old, new, manager, False, dry_run=dry, manager_subresource="scale")
        return self._scale_of(res, obj)

    def _patch(self, rq: Request, q: Any, raw: bytes, content_type: str) -> web.Response:
        manager, strict, dry = self._opts(q)
        res = rq.res
        ctype = content_type.split(";")[0].strip()
        if ctype not in (_MERGE, _JSON_PATCH, _SMP, _APPLY) or (ctype == _SMP and res.is_crd):
            accepted = [_JSON_PATCH, _MERGE, _APPLY] + ([] if res.is_crd else [_SMP])
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: "
                           + ", ".join(accepted))
        patch = self._body(raw, "yaml" if ctype == _APPLY else "json")
        old = self.s.get(res, rq.namespace, rq.name or "")
        if ctype == _APPLY:
            return self._apply(rq, q, old, patch, strict, dry)
        if old is None:
            raise not_found(res, rq.name or "")
        node = res.node()
        if rq.subresource == "scale":
            current = self._scale_of(res, old)
            base, node = current, patching.Node(None)
        else:
            base = self._out(res, old)
        try:
            if ctype == _MERGE:
                if not isinstance(patch, dict):
                    raise patching.PatchError("a merge patch must be a JSON object")
                new = patching.merge_patch(base, patch)
            elif ctype == _JSON_PATCH:
                new = patching.json_patch(base, patch)
            else:
                if not isinstance(patch, dict):
                    raise patching.PatchError("a strategic merge patch must be a JSON object")
                new = patching.strategic_merge(base, patch, node)
        except patching.PatchError as exc:
            raise ApiError(422 if ctype == _JSON_PATCH else 400, "Invalid" if ctype == _JSON_PATCH else "BadRequest",
                           f"the server rejected our request due to an error in our request: {exc}") from None
        if rq.subresource == "scale":
            return _json(self._write_scale(rq, old, new, dry, manager or rq.agent))
        obj, warnings = self.s.admit(rq, old, new, manager or rq.agent, strict, dry_run=dry)
        return self._written(self._out(res, obj), 200, warnings, res)

    def _apply(self, rq: Request, q: Any, old: dict[str, Any] | None, config: Any, strict: bool, dry: bool) -> web.Response:
        res = rq.res
        manager = q.get("fieldManager")
        if not manager:
            raise ApiError(400, "BadRequest", "PATCH /apply requires fieldManager to be set")
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "error decoding YAML: the apply configuration is not an object")
        if config.get("apiVersion") != res.api_version and rq.subresource != "scale":
            raise ApiError(400, "BadRequest", f"invalid object type: {config.get('apiVersion')}, Kind={config.get('kind')}")
        if (config.get("metadata") or {}).get("name") not in (None, rq.name):
            raise ApiError(400, "BadRequest", f"the name of the object ({config['metadata']['name']}) does not match the name on the URL ({rq.name})")
        if rq.subresource == "scale":
            raise ApiError(415, "UnsupportedMediaType", "apply is not supported on the scale subresource by the box")
        if old is None:  # an apply that creates needs `create` too, as in the real server
            self._authorize(rq.user, "create", res, rq.namespace, rq.name, None)
        force = q.get("force") in ("true", "1")
        config = copy.deepcopy(config)
        config.setdefault("metadata", {})["name"] = rq.name
        node = res.node()
        # Defaulting and pruning apply to the configuration too, so defaults are nobody's fields.
        from .schema import prune
        dropped = prune(node, config) if res.is_crd or node.known else []
        if dropped and strict:
            raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped))
        live = old if old is not None else {"apiVersion": res.api_version, "kind": res.kind, "metadata": {"name": rq.name}}
        new, conflicts = patching.apply(live, config, node, manager, res.api_version, force, rq.subresource or "")
        if conflicts:
            causes = [{"type": "FieldManagerConflict", "message": f'conflict with "{c.manager}"'
                                                                     f'{" using " + c.api_version if c.api_version else ""}',
                       "field": patching.format_path(c.path)} for c in conflicts]
            lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
            msg = (f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: "
                   + "; ".join(f"{c['message']}: {c['field']}" for c in causes))
            raise ApiError(409, "Conflict", msg, {**_details(res, rq.name), "causes": causes})
        managers = patching.managers_of(new)
        obj, warnings = self.s.admit(rq, old, new, None, strict, operation="Apply", dry_run=dry, managers=managers)
        return self._written(self._out(res, obj), 201 if old is None else 200, warnings, res)

    def _delete(self, rq: Request, q: Any, options: Any) -> dict[str, Any]:
        res = rq.res
        if rq.subresource:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        obj = self._existing(rq)
        options = options if isinstance(options, dict) else {}
        policy = q.get("propagationPolicy") or options.get("propagationPolicy")
        if options.get("orphanDependents") is True or q.get("orphanDependents") == "true":
            policy = policy or "Orphan"
        policy = policy or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "{policy}"')
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.group_resource} "{rq.name}": Precondition failed: '
                           f'UID in precondition: {pre["uid"]}, UID in object meta: {obj["metadata"]["uid"]}', _details(res, rq.name))
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise conflict(res, rq.name or "")
        if res.kind == "Namespace" and not res.group and rq.name in ("default", "kube-system", "kube-public"):
            raise ApiError(403, "Forbidden", f'namespaces "{rq.name}" is forbidden: this namespace may not be deleted', _details(res, rq.name))
        if q.get("dryRun") == "All" or options.get("dryRun") == ["All"]:
            return self._out(res, obj)
        grace = q.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        try:
            grace = None if grace is None else int(grace)
        except (TypeError, ValueError):
            raise ApiError(400, "BadRequest", f"gracePeriodSeconds must be an integer, got {grace!r}") from None
        return self._out(res, self.s._delete_object(res, obj, policy, grace))

    def _delete_collection(self, rq: Request, q: Any) -> dict[str, Any]:
        items = self._visible(rq, q)
        for obj in items:
            self.s._delete_object(rq.res, obj, q.get("propagationPolicy") or "Background")
        return {"kind": f"{rq.res.kind}List", "apiVersion": rq.res.api_version, "metadata": {"resourceVersion": str(self.s.rv)},
                "items": [self._out(rq.res, o) for o in items]}

    # ---- watch ----

    async def _watch(self, request: web.Request, rq: Request) -> web.StreamResponse:
        res = rq.res
        q = request.query
        try:
            lmatch = label_selector(q.get("labelSelector", ""))
            fmatch = field_selector(q.get("fieldSelector", ""), res.field_labels)
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None

        def match(obj: dict[str, Any] | None) -> bool:
            return obj is not None and (rq.namespace is None or obj["metadata"].get("namespace") == rq.namespace) \
                and lmatch(obj["metadata"].get("labels") or {}) and fmatch(obj)

        rv_param = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds", "0") or 0) or None
        watcher = Watcher(res, rq.namespace, match)
        initial: list[tuple[str, dict[str, Any]]] = []
        gone = None
        if rv_param in ("", "0"):
            initial = [("ADDED", o) for o in self._visible(rq, q)]
        else:
            try:
                start = int(rv_param)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param}") from None
            if start < self.s.compacted:
                gone = start
            else:
                for ev in self.s.history:
                    if ev.rv > start and ev.key == res.key:
                        watcher.queue.put_nowait(ev)
        self.s.watchers.add(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await response.prepare(request)

        as_table = res.is_crd and tables.wants_table(request.headers.get("Accept", ""))
        first = [True]

        async def send(type_: str, obj: dict[str, Any]) -> None:
            if as_table and type_ in ("ADDED", "MODIFIED", "DELETED"):
                obj = tables.table(res, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}, q.get("includeObject", "Metadata"))
                if not first[0]:
                    obj["columnDefinitions"] = None  # as the real server: column definitions in the first event only
                first[0] = False
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            if gone is not None:
                await send("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                     "message": f"too old resource version: {gone} ({self.s.compacted})", "reason": "Expired", "code": 410})
                return response
            for type_, obj in initial:
                await send(type_, self._out(res, obj))
            deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            last_bookmark = asyncio.get_running_loop().time()
            while True:
                now = asyncio.get_running_loop().time()
                wait = self.s.bookmark_interval if bookmarks else 3600.0
                wait = min(wait, max(0.0, last_bookmark + self.s.bookmark_interval - now)) if bookmarks else wait
                if deadline is not None:
                    wait = min(wait, deadline - now)
                    if wait <= 0:
                        break
                try:
                    ev = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0.001))
                except asyncio.TimeoutError:
                    if bookmarks and asyncio.get_running_loop().time() >= last_bookmark + self.s.bookmark_interval:
                        await send("BOOKMARK", {"kind": res.kind, "apiVersion": res.api_version,
                                                "metadata": {"resourceVersion": str(self.s.rv)}})
                        last_bookmark = asyncio.get_running_loop().time()
                    continue
                if ev is None:
                    break  # a dropped stream (injected fault, or the box stopping)
                now_match, was_match = match(ev.obj), match(ev.old) if ev.type == "MODIFIED" else False
                if ev.type == "MODIFIED" and now_match and not was_match:
                    await send("ADDED", self._out(res, ev.obj))
                elif ev.type == "MODIFIED" and was_match and not now_match:
                    await send("DELETED", self._out(res, ev.obj))
                elif now_match:
                    await send(ev.type, self._out(res, ev.obj))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.s.watchers.discard(watcher)
        return response

    # ---- discovery and OpenAPI ----

    def _versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for (g, v, _), _r in self.s.resources.items():
            if g and v not in groups.setdefault(g, []):
                groups[g].append(v)
        return groups

    def _group_doc(self, group: str, versions: list[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": vs, "preferredVersion": vs[0]}

    def _group_list(self) -> dict[str, Any]:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in sorted(self._versions().items())]}

    def _group(self, group: str) -> web.Response:
        vs = self._versions().get(group)
        if not vs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, vs)})

    def _resource_list(self, group: str, version: str) -> web.Response:
        rs = [r for (g, v, _), r in self.s.resources.items() if (g, v) == (group, version)]
        if not rs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        out = []
        for r in rs:
            entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                     "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]}
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            if r.categories:
                entry["categories"] = list(r.categories)
            out.append(entry)
            if r.status:
                out.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
                            "verbs": ["get", "patch", "update"]})
            if r.scale:
                out.append({"name": f"{r.plural}/scale", "singularName": "", "namespaced": r.namespaced, "group": "autoscaling",
                            "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
        return _json({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                      "resources": out})

    def _openapi(self, parts: list[str], request: web.Request) -> web.Response:
        if parts[:1] != ["v3"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        gvs = sorted({(g, v) for (g, v, _) in self.s.resources})
        if len(parts) == 1:
            paths = {}
            for g, v in gvs:
                key = f"apis/{g}/{v}" if g else f"api/{v}"
                doc = openapi.document(self.s, g, v)
                digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            return _json({"paths": paths})
        rest = parts[1:]
        if rest[0] == "api" and len(rest) == 2:
            g, v = "", rest[1]
        elif rest[0] == "apis" and len(rest) == 3:
            g, v = rest[1], rest[2]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if (g, v) not in gvs:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(openapi.document(self.s, g, v))
