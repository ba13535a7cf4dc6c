"""The four ways a write can change an object, as the API server applies them: JSON merge patch
(RFC 7386), JSON patch (RFC 6902, the `jsonpatch` library), strategic merge patch (list merge
keys from the real schemas) and server-side apply (field sets per manager, conflicts, removal
of fields a manager stops applying)."""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass
from typing import Any

import jsonpatch

from .schema import Node

Path = tuple[tuple[str, str], ...]  # (("f", "spec"), ("k", '{"name":"main"}'), ("f", "image"))


class PatchError(Exception):
    """A patch that cannot apply (the server answers 422 or 400)."""


# ---- merge patch and JSON patch ----------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    try:
        return jsonpatch.JsonPatch(operations).apply(copy.deepcopy(target))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError, TypeError) as exc:
        raise PatchError(str(exc)) from exc


# ---- strategic merge patch ---------------------------------------------------------------------

def strategic_merge(original: Any, patch: Any, node: Node) -> Any:
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch) if not isinstance(patch, dict) else _strip_directives(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if patch.get("$patch") == "delete":
        return {}
    result = copy.deepcopy(original)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
            continue
        child = node.child(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, child)
        elif isinstance(value, dict):
            result[key] = strategic_merge(result.get(key) if isinstance(result.get(key), dict) else {}, value, child)
        else:
            result[key] = value
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not (k.startswith("$setElementOrder/") or k in ("$retainKeys", "$patch"))}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_list(original: Any, patch: list[Any], node: Node) -> list[Any]:
    merge_key = node.patch_merge_key()
    if merge_key is None or not isinstance(original, list):
        return [_strip_directives(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    if merge_key == "":  # a list of scalars merged as a set (finalizers)
        result = list(original)
        for x in patch:
            if x not in result:
                result.append(x)
        return result
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {merge_key}")
        index = next((i for i, x in enumerate(result) if isinstance(x, dict) and x.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge(result[index], item, node.item())
    return result


# ---- server-side apply: field sets -------------------------------------------------------------

# Fields the server owns: never part of a manager's set.
_SYSTEM_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "generateName"}


def _item_pe(node: Node, item: Any) -> tuple[str, str]:
    if node.list_type() == "map" and isinstance(item, dict):
        return ("k", json.dumps({k: item[k] for k in node.map_keys() if k in item}, separators=(",", ":"), sort_keys=True))
    return ("v", json.dumps(item, separators=(",", ":"), sort_keys=True))


def field_set(obj: dict[str, Any], node: Node, status: bool = False) -> set[Path]:
    """The fields an object sets: leaves, list items of associative lists, atomic values."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (key == "status") != status:
            continue
        if key == "metadata":
            if status:
                continue
            meta = {k: v for k, v in (value or {}).items() if k not in _SYSTEM_META}
            if meta:
                _walk(meta, node.child("metadata"), (("f", "metadata"),), out)
            continue
        _walk(value, node.child(key), (("f", key),), out)
    return out


def _walk(value: Any, node: Node, prefix: Path, out: set[Path]) -> None:
    if isinstance(value, dict) and value and not node.map_atomic():
        for key, sub in value.items():
            _walk(sub, node.child(key), prefix + (("f", key),), out)
    elif isinstance(value, list) and node.list_type() in ("map", "set"):
        if not value:
            out.add(prefix)
        for item in value:
            pe = prefix + (_item_pe(node, item),)
            out.add(pe)
            if node.list_type() == "map" and isinstance(item, dict):
                for key, sub in item.items():
                    _walk(sub, node.item().child(key), pe + (("f", key),), out)
    else:
        out.add(prefix)


_MISSING = object()


def get_path(obj: Any, path: Path) -> Any:
    cur = obj
    for kind, key in path:
        if kind == "f":
            if not isinstance(cur, dict) or key not in cur:
                return _MISSING
            cur = cur[key]
        else:
            if not isinstance(cur, list):
                return _MISSING
            want = json.loads(key)
            if kind == "k":
                cur = next((x for x in cur if isinstance(x, dict) and all(x.get(k) == v for k, v in want.items())), _MISSING)
            else:
                cur = want if want in cur else _MISSING
            if cur is _MISSING:
                return _MISSING
    return cur


def remove_path(obj: Any, path: Path) -> None:
    parent = get_path(obj, path[:-1]) if len(path) > 1 else obj
    kind, key = path[-1]
    if kind == "f" and isinstance(parent, dict):
        parent.pop(key, None)
    elif isinstance(parent, list):
        want = json.loads(key)
        for i, x in enumerate(parent):
            if (kind == "k" and isinstance(x, dict) and all(x.get(k) == v for k, v in want.items())) or (kind == "v" and x == want):
                del parent[i]
                break


def changed_fields(old: dict[str, Any], new: dict[str, Any], node: Node, status: bool = False) -> set[Path]:
    """Fields an update set to a new value (what an Update manager comes to own)."""
    return {p for p in field_set(new, node, status) if get_path(old, p) != get_path(new, p)}


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        cur = root
        for kind, key in path:
            cur = cur.setdefault(f"{kind}:{key}", {})
    _mark(root, paths, ())
    return root


def _mark(tree: dict[str, Any], paths: set[Path], prefix: Path) -> None:
    for name, sub in tree.items():
        if name == ".":
            continue
        kind, key = name.split(":", 1)
        p = prefix + ((kind, key),)
        if sub and p in paths:
            sub["."] = {}
        _mark(sub, paths, p)


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for name, sub in (tree or {}).items():
        if name == ".":
            out.add(prefix)
            continue
        kind, key = name.split(":", 1)
        p = prefix + ((kind, key),)
        if not sub:
            out.add(p)
        else:
            out |= from_fields_v1(sub, p)
    return out


@dataclass
class Manager:
    manager: str
    operation: str  # Apply | Update
    api_version: str
    subresource: str
    fields: set[Path]
    time: str

    def entry(self) -> dict[str, Any]:
        e = {"manager": self.manager, "operation": self.operation, "apiVersion": self.api_version,
             "time": self.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(self.fields)}
        if self.subresource:
            e["subresource"] = self.subresource
        return e


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def managers_of(obj: dict[str, Any]) -> list[Manager]:
    return [Manager(m.get("manager", ""), m.get("operation", "Update"), m.get("apiVersion", ""), m.get("subresource", ""),
                    from_fields_v1(m.get("fieldsV1") or {}), m.get("time", now()))
            for m in (obj.get("metadata", {}).get("managedFields") or []) if isinstance(m, dict)]


def record(managers: list[Manager], name: str, operation: str, api_version: str, subresource: str,
           fields: set[Path], replace: bool, take: bool = True) -> list[Manager]:
    """Gives `fields` to one manager entry and (an update's, not an apply's) takes them from every other."""
    out = []
    mine = None
    for m in managers:
        if (m.manager, m.operation, m.subresource) == (name, operation, subresource):
            mine = m
            continue
        if take:
            m.fields -= fields
        if m.fields:
            out.append(m)
    new_fields = set(fields) if replace or mine is None else mine.fields | fields
    if new_fields:
        out.append(Manager(name, operation, api_version, subresource, new_fields, now()))
    return out


@dataclass
class Conflict:
    manager: str
    api_version: str
    path: Path


def format_path(path: Path) -> str:
    out = ""
    for kind, key in path:
        if kind == "f":
            out += "." + key
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(key).items()) + "]"
        else:
            out += f"[{key}]"
    return out


def apply(live: dict[str, Any] | None, config: dict[str, Any], node: Node, manager: str, api_version: str,
          force: bool, subresource: str = "") -> tuple[dict[str, Any], list[Conflict]]:
    """Server-side apply of `config` by `manager` onto `live`. Returns the new object (managedFields
    updated) and the conflicts (when any and not forced, the object is unchanged)."""
    status = subresource == "status"
    live = copy.deepcopy(live) if live is not None else {}
    managers = managers_of(live)
    applied = field_set(config, node, status)
    conflicts = []
    for m in managers:
        if (m.manager, m.operation, m.subresource) == (manager, "Apply", subresource):
            continue
        for p in m.fields & applied:
            if p[-1][0] in ("k", "v"):
                continue  # sharing a list item is no conflict; its fields are compared one by one
            if get_path(live, p) != get_path(config, p):
                conflicts.append(Conflict(m.manager, m.api_version, p))
    conflicts.sort(key=lambda c: (c.manager, format_path(c.path)))
    if conflicts and not force:
        return live, conflicts
    if force:
        for m in managers:
            if m.manager != manager:
                m.fields -= {c.path for c in conflicts}
    previous = next((m.fields for m in managers if (m.manager, m.operation, m.subresource) == (manager, "Apply", subresource)), set())
    others = set().union(*(m.fields for m in managers if (m.manager, m.operation, m.subresource) != (manager, "Apply", subresource)))
    result = copy.deepcopy(live)
    for p in sorted(previous - applied, key=len):  # an item before its fields: they go with it
        if p not in others and not any(o[:len(p)] == p for o in others):
            remove_path(result, p)
            # Maps left empty by the removal, and owned by nobody, go with their last field.
            for depth in range(len(p) - 1, 1, -1):
                parent = p[:depth]
                if parent[-1][0] == "f" and get_path(result, parent) == {} and parent not in others:
                    remove_path(result, parent)
    result = _ssa_merge(result, config, node, top=True, status=status)
    managers = record(managers, manager, "Apply", api_version, subresource, applied, replace=True, take=False)
    result.setdefault("metadata", {})["managedFields"] = [m.entry() for m in managers]
    return result, []


def _ssa_merge(live: Any, config: Any, node: Node, top: bool = False, status: bool = False) -> Any:
    if isinstance(config, dict) and isinstance(live, dict) and not node.map_atomic():
        out = copy.deepcopy(live)
        for key, value in config.items():
            if top and ((key == "status") != status) and key not in ("apiVersion", "kind", "metadata"):
                continue
            if top and key == "metadata":
                value = {k: v for k, v in value.items() if k not in _SYSTEM_META or k in ("name", "namespace")}
            out[key] = _ssa_merge(out.get(key), value, node.child(key))
        return out
    if isinstance(config, list) and isinstance(live, list) and node.list_type() in ("map", "set"):
        out = copy.deepcopy(live)
        for item in config:
            pe = _item_pe(node, item)
            existing = get_path(out, (pe,))
            if existing is _MISSING:
                out.append(copy.deepcopy(item))
            elif node.list_type() == "map":
                idx = next(i for i, x in enumerate(out) if x is existing or x == existing)
                out[idx] = _ssa_merge(existing, item, node.item())
        return out
    return copy.deepcopy(config)
