"""The box's API server: an aiohttp application over an in-memory store.

Why not kmock: kmock 0.8's `KubernetesEmulator` is a request-matching mock with a dict store. It
assigns no uid/resourceVersion, answers POST with 200, merges patches as dicts, has no
subresources, RBAC, selectors or watch resumption, and its routing is built around its DSL of
expectations. Everything issue 11 needs lives in the write path that kmock's `_handle` owns, so
extending it would mean replacing its core while keeping its DSL out of the way. We keep kmock's
stack (aiohttp) and write the server ourselves; kmock stays what the existing operator tests use.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import re
import secrets
import uuid
from typing import Any


from . import patching
from .patching import Manager
from .rbac import Authorizer, User
from .resources import BUILTIN, Resource, from_crd
from .schema import FieldError, apply_defaults, prune, structural_errors, validate
from .selection import label_selector, selector_string

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details, self.headers = code, reason, message, details, headers or {}

    def status(self) -> dict[str, Any]:
        s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
             "reason": self.reason, "code": self.code}
        if self.details:
            s["details"] = self.details
        return s


def _details(res: Resource, name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": res.plural}
    if name:
        d["name"] = name
    if res.group:
        d["group"] = res.group
    return d


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.group_resource} "{name}" not found', _details(res, name))


def invalid(res: Resource, name: str, errors: list[FieldError]) -> ApiError:
    msgs = [f"{e.field}: {e.message}" for e in errors]
    kind = f"{res.kind}.{res.group}" if res.group else res.kind
    msg = f'{kind} "{name}" is invalid: ' + (msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]")
    details = {"name": name, "kind": res.kind, "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]}
    if res.group:
        details["group"] = res.group
    return ApiError(422, "Invalid", msg, details)


def conflict(res: Resource, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again", _details(res, name))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.setdefault("metadata", {})


def _now() -> str:
    return patching.now()


def _get_dotted(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _set_dotted(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    cur = obj
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


@dataclasses.dataclass
class Event:
    rv: int
    key: tuple[str, str]
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclasses.dataclass
class Fault:
    kind: str  # "429" | "500" | "slow"
    remaining: int
    resource: str | None
    verb: str | None
    retry_after: int
    delay: float


class Faults:
    """What the tests inject: the next N requests (optionally of one resource or verb) answer 429
    with Retry-After, 500, or slowly; `drop_watches()` closes open watch streams."""

    def __init__(self, box: ApiServer):
        self._box = box
        self._faults: list[Fault] = []
        self.served: dict[str, int] = {}  # fault kind -> how many requests it answered

    def inject(self, kind: str, count: int = 1, resource: str | None = None, verb: str | None = None,
               retry_after: int = 1, delay: float = 1.0) -> None:
        if kind not in ("429", "500", "slow"):
            raise ValueError(f"unknown fault {kind!r}")
        self._box.call_soon(self._faults.append, Fault(kind, count, resource, verb, retry_after, delay))

    def drop_watches(self, resource: str | None = None) -> int:
        return self._box.call(self._box.drop_watches, resource)

    def clear(self) -> None:
        self._box.call_soon(self._faults.clear)

    def take(self, resource: str | None, verb: str) -> Fault | None:
        for f in self._faults:
            if (f.resource is None or f.resource == resource) and (f.verb is None or f.verb == verb):
                f.remaining -= 1
                if f.remaining <= 0:
                    self._faults.remove(f)
                self.served[f.kind] = self.served.get(f.kind, 0) + 1
                return f
        return None


@dataclasses.dataclass
class Request:
    res: Resource | None
    namespace: str | None
    name: str | None
    subresource: str | None
    verb: str
    user: User
    agent: str = "unknown"  # the default field manager: the client's User-Agent up to the first '/'


class Watcher:
    def __init__(self, res: Resource, namespace: str | None, match: Any):
        self.res, self.namespace, self.match = res, namespace, match
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()


class ApiServer:
    """State and handlers. All state is touched only from the server's event loop."""

    def __init__(self, admin_token: str, bookmark_interval: float = 5.0, history: int = 10_000,
                 owner_reference_enforcement: bool = True):
        self.admin_token = admin_token
        self.bookmark_interval = bookmark_interval
        self.history_limit = history
        self.owner_reference_enforcement = owner_reference_enforcement
        self.resources: dict[tuple[str, str, str], Resource] = {}  # (group, version, plural)
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self.rv = 1
        self.history: list[Event] = []
        self.compacted = 0
        self.watchers: set[Watcher] = set()
        self.faults = Faults(self)
        self.authorizer = Authorizer(self)
        self.tokens: dict[str, User] = {}
        self.requests: list[tuple[str, str | None, str]] = []  # (verb, resource, user) of each API request
        self.loop: asyncio.AbstractEventLoop | None = None
        self._gc_wake: asyncio.Event | None = None
        self.listeners: list[Any] = []  # called with each Event (the controllers wake on them)
        for r in BUILTIN:
            self.resources[(r.group, r.version, r.plural)] = r
            self.objects.setdefault(r.key, {})
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._store_new(self.by_plural("", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                                                                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    # ---- thread bridging (the box runs the loop in its own thread) ----

    def call(self, fn: Any, *args: Any) -> Any:
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.call(fn, *args)

    # ---- resources ----

    def by_plural(self, group: str, plural: str) -> Resource:
        return next(r for r in self.resources.values() if r.group == group and r.plural == plural)

    def by_kind(self, api_version: str, kind: str) -> Resource | None:
        group, _, version = api_version.rpartition("/")
        return next((r for r in self.resources.values() if (r.group, r.version, r.kind) == (group, version, kind)), None)

    def _register_crd(self, crd: dict[str, Any]) -> None:
        for r in from_crd(crd):
            self.resources[(r.group, r.version, r.plural)] = r
            self.objects.setdefault(r.key, {})
        crd.setdefault("status", {})
        names = crd["spec"]["names"]
        crd["status"]["acceptedNames"] = {k: v for k, v in names.items()}
        crd["status"]["storedVersions"] = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
        crd["status"]["conditions"] = [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": _now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": _now()}]

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        for key in [k for k, r in self.resources.items() if r.crd_name == crd["metadata"]["name"]]:
            res = self.resources.pop(key)
            for obj in list(self.objects.get(res.key, {}).values()):
                self._remove(res, obj)

    # ---- store primitives ----

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, res: Resource, type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ev = Event(int(obj["metadata"]["resourceVersion"]), res.key, type_, copy.deepcopy(obj), old)
        self.history.append(ev)
        if len(self.history) > self.history_limit:
            drop = len(self.history) - self.history_limit
            self.compacted = self.history[drop - 1].rv
            del self.history[:drop]
        for w in list(self.watchers):
            if w.res.key == res.key:
                w.queue.put_nowait(ev)
        if self._gc_wake is not None:
            self._gc_wake.set()
        for listener in list(self.listeners):
            listener(ev)

    def compact(self) -> int:
        """Forget the watch history up to now, as etcd compaction does: resuming below is 410."""
        self.compacted = self.rv
        self.history.clear()
        return self.rv

    def _store_new(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        meta = _meta(obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if res.tracks_generation:
            meta["generation"] = 1
        meta["resourceVersion"] = str(self._next_rv())
        self.objects[res.key][(meta.get("namespace", ""), meta["name"])] = obj
        self._emit(res, "ADDED", obj, None)
        return obj

    def _store_update(self, res: Resource, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        meta = new["metadata"]
        # Gone once nothing holds it: no finalizer left and no grace period running (a pod's kubelet ends that).
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
            self.objects[res.key].pop((meta.get("namespace", ""), meta["name"]), None)
            self._emit(res, "DELETED", new, old)
            self._after_removal(res, new)
            return new
        self.objects[res.key][(meta.get("namespace", ""), meta["name"])] = new
        self._emit(res, "MODIFIED", new, old)
        return new

    def _remove(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self.objects[res.key].pop((meta.get("namespace", ""), meta["name"]), None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(res, "DELETED", gone, obj)
        self._after_removal(res, gone)
        return gone

    def _after_removal(self, res: Resource, obj: dict[str, Any]) -> None:
        if res.kind == "CustomResourceDefinition" and res.group == "apiextensions.k8s.io":
            self._unregister_crd(obj)

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get(res.key, {}).get((namespace or "", name))

    def all_objects(self) -> list[tuple[Resource, dict[str, Any]]]:
        seen = set()
        out = []
        for r in self.resources.values():
            if r.key in seen:
                continue
            seen.add(r.key)
            out += [(r, o) for o in self.objects.get(r.key, {}).values()]
        return out

    def find_uid(self, uid: str) -> tuple[Resource, dict[str, Any]] | None:
        for r, o in self.all_objects():
            if o["metadata"].get("uid") == uid:
                return r, o
        return None

    # ---- garbage collector and namespace controller ----

    async def gc_loop(self) -> None:
        self._gc_wake = asyncio.Event()
        while True:
            await self._gc_wake.wait()
            self._gc_wake.clear()
            await asyncio.sleep(0.02)  # background: after the owner's delete has been answered
            try:
                self._gc_pass()
            except Exception:  # noqa: BLE001 - the collector must outlive one bad object
                import traceback
                traceback.print_exc()

    def _gc_pass(self) -> None:
        uids = {o["metadata"]["uid"]: (r, o) for r, o in self.all_objects()}
        for res, obj in list(uids.values()):
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp"):
                live_owners = [ref for ref in refs if ref.get("uid") in uids and self._same_owner(ref, uids[ref["uid"]])]
                orphaning = [ref for ref in live_owners if "orphan" in (uids[ref["uid"]][1]["metadata"].get("finalizers") or [])
                             and uids[ref["uid"]][1]["metadata"].get("deletionTimestamp")]
                if orphaning:
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r not in orphaning]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self._store_update(res, obj, new)
                    continue
                if not live_owners:
                    self._delete_object(res, obj, "Background")
                    continue
                fg = [ref for ref in live_owners if "foregroundDeletion" in (uids[ref["uid"]][1]["metadata"].get("finalizers") or [])
                      and uids[ref["uid"]][1]["metadata"].get("deletionTimestamp")]
                if fg:
                    self._delete_object(res, obj, "Foreground")
        # owners waiting on dependents
        uids = {o["metadata"]["uid"]: (r, o) for r, o in self.all_objects()}
        for res, obj in list(uids.values()):
            meta = obj["metadata"]
            fins = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                continue
            dependents = [(r, o) for r, o in uids.values() if any(ref.get("uid") == meta["uid"] for ref in o["metadata"].get("ownerReferences") or [])]
            if "orphan" in fins and not dependents:
                self._drop_finalizer(res, obj, "orphan")
            elif "foregroundDeletion" in fins:
                blocking = [d for d in dependents if any(ref.get("uid") == meta["uid"] and ref.get("blockOwnerDeletion")
                                                         for ref in d[1]["metadata"].get("ownerReferences") or [])]
                if not blocking:
                    self._drop_finalizer(res, obj, "foregroundDeletion")
            if res.kind == "Namespace" and not res.group and "kubernetes" in ((obj.get("spec") or {}).get("finalizers") or []):
                contents = [(r, o) for r, o in self.all_objects() if r.namespaced and o["metadata"].get("namespace") == meta["name"]]
                for r, o in contents:
                    if not o["metadata"].get("deletionTimestamp"):
                        self._delete_object(r, o, "Background")
                if not contents:
                    new = copy.deepcopy(obj)
                    new["spec"]["finalizers"] = []
                    self._store_update(res, obj, new)  # removes it when no metadata finalizer is left

    @staticmethod
    def _same_owner(ref: dict[str, Any], owner: tuple[Resource, dict[str, Any]]) -> bool:
        return ref.get("kind") == owner[0].kind

    def _drop_finalizer(self, res: Resource, obj: dict[str, Any], finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers", []) if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._store_update(res, obj, new)

    def _delete_object(self, res: Resource, obj: dict[str, Any], policy: str, grace: int | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        if res.key == ("", "pods") and getattr(self, "kubelet", None) is not None:
            held = self.kubelet.graceful_delete(obj, grace)  # type: ignore[attr-defined]
            if held is not None:
                return held
        fins = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in fins:
            fins.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in fins:
            fins.append("orphan")
        namespace_pending = res.kind == "Namespace" and not res.group and ((obj.get("spec") or {}).get("finalizers"))
        if not fins and not namespace_pending:
            return self._remove(res, obj)
        if meta.get("deletionTimestamp") and fins == (meta.get("finalizers") or []):
            return obj
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = fins
        if not fins:
            del new["metadata"]["finalizers"]
        if not new["metadata"].get("deletionTimestamp"):
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if res.tracks_generation:
                new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
        if namespace_pending:
            new.setdefault("status", {})["phase"] = "Terminating"
        stored = self.objects[res.key][(meta.get("namespace", ""), meta["name"])] = new
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(res, "MODIFIED", new, obj)
        return stored

    async def drop_watches_async(self, resource: str | None) -> int:
        return self.drop_watches(resource)

    def drop_watches(self, resource: str | None = None) -> int:
        n = 0
        for w in list(self.watchers):
            if resource is None or w.res.plural == resource:
                w.queue.put_nowait(None)
                n += 1
        return n

    # ---- the write path ----

    def admit(self, rq: Request, old: dict[str, Any] | None, new: dict[str, Any], manager: str | None,
              strict: bool, operation: str = "Update", dry_run: bool = False,
              managers: list[Manager] | None = None, manager_subresource: str | None = None) -> tuple[dict[str, Any], list[str]]:
        """Everything a create/update/patch goes through after the patch is applied: subresource
        semantics, defaulting, pruning, validation, finalizer and owner-reference admission,
        generation, managed fields; then the store. Returns the stored object and warnings."""
        res = rq.res
        assert res is not None
        warnings: list[str] = []
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        new = copy.deepcopy(new)
        name = rq.name or _meta(new).get("name")
        meta = _meta(new)
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if new.get("kind") not in (None, res.kind) and rq.subresource is None:
            raise ApiError(400, "BadRequest", f"the kind of the object ({new.get('kind')}) does not match the kind of the URL ({res.kind})")
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        if res.namespaced:
            if meta.get("namespace") not in (None, "", rq.namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = rq.namespace
        else:
            meta.pop("namespace", None)
        if old is not None:
            if meta.get("name") not in (None, old["metadata"]["name"]):
                raise ApiError(400, "BadRequest", f"the name of the object ({meta.get('name')}) does not match the name on the URL ({old['metadata']['name']})")
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "name", "namespace"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            # Subresources: a status write changes only status, a main write leaves status alone.
            if rq.subresource == "status":
                keep_meta = meta
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    del new["status"]
                new["metadata"] = copy.deepcopy(old["metadata"])
                new["metadata"]["resourceVersion"] = keep_meta.get("resourceVersion", old["metadata"]["resourceVersion"])
                meta = new["metadata"]
            elif res.status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        else:
            if not name and meta.get("generateName"):
                name = meta["generateName"] + secrets.token_hex(3)[:5]
            if not name:
                raise invalid(res, "", [FieldError("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")])
            meta["name"] = name
            if res.status:
                new.pop("status", None)
            if res.kind == "Pod" and not res.group:  # what the pod strategy sets on create
                new["status"] = {"phase": "Pending"}
            if res.kind == "Namespace" and not res.group:  # what the namespace strategy sets
                new["spec"] = {"finalizers": ["kubernetes"]}
                new["status"] = {"phase": "Active"}
            for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "managedFields"):
                meta.pop(k, None)
        if old is None and not _NAME.match(name or "") or len(name or "") > 253:
            raise invalid(res, name or "", [FieldError("metadata.name", "FieldValueInvalid",
                                                       f"Invalid value: {json.dumps(name)}: a lowercase RFC 1123 subdomain must consist of lower case "
                                                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")])
        if res.namespaced and old is None and self.get(self.by_plural("", "namespaces"), None, rq.namespace or "") is None:
            raise ApiError(404, "NotFound", f'namespaces "{rq.namespace}" not found', {"name": rq.namespace, "kind": "namespaces"})
        if res.namespaced and old is None:
            ns = self.get(self.by_plural("", "namespaces"), None, rq.namespace or "")
            if ns and ns["metadata"].get("deletionTimestamp"):
                raise ApiError(403, "Forbidden", f'{res.kind.lower()} "{name}" is forbidden: unable to create new content in namespace '
                               f'{rq.namespace} because it is being terminated')
        if res.kind == "Secret" and not res.group and isinstance(new.get("stringData"), dict):
            # Write-only, as in the real API: stringData is merged into data (base64) and never stored.
            new["data"] = {**(new.get("data") or {}), **{k: base64.b64encode(str(v).encode()).decode()
                                                         for k, v in new.pop("stringData").items()}}
        # Schema: pruning, defaulting, validation.
        node = res.node()
        dropped = prune(node, new) if res.is_crd or node.known else []
        if dropped:
            if strict:
                raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(f'unknown field "{d}"' for d in dropped))
            warnings += [f'unknown field "{d}"' for d in dropped]
        if res.is_crd:
            apply_defaults(node, new)
        errors = self._validate_meta(new)
        errors += validate(node, new, old, "", old is not None)
        errors += self._validate_kind(res, new)
        if errors:
            raise invalid(res, name, errors)
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                raise invalid(res, name, [FieldError("metadata.finalizers", "FieldValueForbidden",
                                                     f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {json.dumps(sorted(added))}")])
        self._check_owner_references(rq, old, new)
        if res.kind == "CustomResourceDefinition" and res.group == "apiextensions.k8s.io":
            self._check_crd(new, old)
        # Generation: bumped when anything but metadata and status changes.
        if old is not None:
            strip = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            if strip(old) != strip(new) and res.tracks_generation:
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if rv := meta.get("resourceVersion"):
                if str(rv) != old["metadata"]["resourceVersion"]:
                    raise conflict(res, name)
            elif res.is_crd and operation == "Update" and rq.verb == "update":
                raise invalid(res, name, [FieldError("metadata.resourceVersion", "FieldValueInvalid",
                                                     "Invalid value: 0x0: must be specified for an update")])
        # Managed fields.
        sub = manager_subresource or rq.subresource or ""
        if managers is not None:
            meta["managedFields"] = [m.entry() for m in managers]
        elif manager:
            ms = patching.managers_of(old) if old is not None else []
            status = sub == "status"
            if old is not None:
                before = patching.field_set(old, node, status)
                after = patching.field_set(new, node, status)
                gone = before - after
                for m in ms:
                    if (m.subresource == "status") == status:
                        m.fields -= gone
                changed = patching.changed_fields(old, new, node, status)
            else:
                changed = patching.field_set(new, node, False)
            ms = patching.record(ms, manager, "Update", res.api_version, sub, changed, replace=False)
            meta["managedFields"] = [m.entry() for m in ms]
        elif old is not None:
            meta["managedFields"] = old["metadata"].get("managedFields", [])
        if not meta.get("managedFields"):
            meta.pop("managedFields", None)
        if old is not None:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return old, warnings  # a no-op write: no new resourceVersion, no event
        if dry_run:
            return new, warnings
        if res.kind == "CustomResourceDefinition" and res.group == "apiextensions.k8s.io":
            self._register_crd(new)
        stored = self._store_new(res, new) if old is None else self._store_update(res, old, new)
        return stored, warnings

    @staticmethod
    def _validate_meta(obj: dict[str, Any]) -> list[FieldError]:
        errors = []
        meta = obj["metadata"]
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                errors.append(FieldError(f"metadata.{field}", "FieldValueTypeInvalid", "Invalid value: must be a map of strings"))
                continue
            if field == "labels":
                for k, v in value.items():
                    if v and (len(v) > 63 or not re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", v)):
                        errors.append(FieldError(f"metadata.labels", "FieldValueInvalid",
                                                 f"Invalid value: {json.dumps(v)}: a valid label must be an empty string or consist of alphanumeric "
                                                 "characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
        for i, ref in enumerate(meta.get("ownerReferences") or []):
            for k in ("apiVersion", "kind", "name", "uid"):
                if not isinstance(ref, dict) or not ref.get(k):
                    errors.append(FieldError(f"metadata.ownerReferences[{i}].{k}", "FieldValueRequired", "Required value"))
        controllers = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("controller")]
        if len(controllers) > 1:
            errors.append(FieldError("metadata.ownerReferences", "FieldValueInvalid", "Invalid value: only one reference can have Controller set to true"))
        return errors

    def _validate_kind(self, res: Resource, obj: dict[str, Any]) -> list[FieldError]:
        """A few of the built-in kinds' hand-written validations that the operator can trip."""
        errors = []
        if res.kind in ("Deployment", "ReplicaSet") and res.group == "apps":
            spec = obj.get("spec") or {}
            sel = spec.get("selector") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not label_selector(selector_string(sel))(labels) or not sel:
                errors.append(FieldError("spec.template.metadata.labels", "FieldValueInvalid",
                                         f"Invalid value: {json.dumps(labels)}: `selector` does not match template `labels`"))
            if isinstance(spec.get("replicas"), int) and spec["replicas"] < 0:
                errors.append(FieldError("spec.replicas", "FieldValueInvalid", f"Invalid value: {spec['replicas']}: must be greater than or equal to 0"))
        return errors

    def _check_crd(self, crd: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        want = f"{names.get('plural')}.{spec.get('group')}"
        res = self.by_plural("apiextensions.k8s.io", "customresourcedefinitions")
        if crd["metadata"]["name"] != want:
            raise invalid(res, crd["metadata"]["name"],
                          [FieldError("metadata.name", "FieldValueInvalid", f'Invalid value: "{crd["metadata"]["name"]}": must be spec.names.plural+"."+spec.group')])
        errors = []
        for i, version in enumerate(spec.get("versions") or ()):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema is None:
                errors.append(FieldError(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueRequired", "Required value: schemas are required"))
            else:
                errors += structural_errors(schema, f"spec.versions[{i}].schema.openAPIV3Schema")
        if errors:
            raise invalid(res, crd["metadata"]["name"], errors)

    def _check_owner_references(self, rq: Request, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """OwnerReferencesPermissionEnforcement (on in OpenShift): setting blockOwnerDeletion needs
        `update` on the owner's `finalizers` subresource."""
        if not self.owner_reference_enforcement:
            return
        old_refs = {json.dumps(r, sort_keys=True) for r in (old or {}).get("metadata", {}).get("ownerReferences") or []}
        for ref in new["metadata"].get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion") or json.dumps(ref, sort_keys=True) in old_refs:
                continue
            owner = self.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner is None:
                raise ApiError(422, "Invalid", f"cannot set blockOwnerDeletion in this case because cannot find RESTMapping for "
                               f"APIVersion {ref.get('apiVersion')} Kind {ref.get('kind')}")
            ns = rq.namespace if owner.namespaced else None
            if not self.authorizer.allowed(rq.user, "update", owner, ns, ref.get("name"), "finalizers"):
                raise ApiError(403, "Forbidden", f'{rq.res.group_resource} "{new["metadata"]["name"]}" is forbidden: cannot set blockOwnerDeletion '
                               f"if an ownerReference refers to a resource you can't set finalizers on: , {ref}",
                               _details(rq.res, new["metadata"]["name"]))
