"""Schemas as the API server uses them: one `Node` walks a built-in kind's schema (the real
Kubernetes schemas that kubernetes-validate ships) or a CRD's openAPIV3Schema, and answers what
the write path asks — list types and merge keys (strategic merge, server-side apply), defaulting,
pruning of unknown fields, and validation including CEL rules with transition rules."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate

#: The Kubernetes version whose built-in schemas the box serves (kubectl here is 1.32).
KUBE_VERSION = "1.32.0"
_SCHEMA_DIR = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBE_VERSION}-local"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def builtin_defs() -> dict[str, Any]:
    return json.loads((_SCHEMA_DIR / "_definitions.json").read_text())["$defs"]


@functools.cache
def builtin_def_for(group: str, version: str, kind: str) -> str | None:
    for name, schema in builtin_defs().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            if (gvk["group"], gvk["version"], gvk["kind"]) == (group, version, kind):
                return name
    return None


def _types(schema: dict[str, Any]) -> set[str]:
    t = schema.get("type")
    if t is None:
        return set()
    return {t} if isinstance(t, str) else {x for x in t if x != "null"}


@dataclass(frozen=True)
class Node:
    """A position in a schema. `schema` is None where nothing is known (anything goes, atomic)."""

    schema: dict[str, Any] | None
    crd: bool = False  # CRD schemas: unknown fields are pruned unless preserved

    @staticmethod
    def builtin(def_name: str) -> Node:
        return Node(builtin_defs()[def_name])

    def _resolved(self) -> dict[str, Any] | None:
        s = self.schema
        while s is not None and "$ref" in s:
            s = builtin_defs()[s["$ref"].rsplit("/", 1)[1]]
        return s

    @property
    def s(self) -> dict[str, Any]:
        return self._resolved() or {}

    @property
    def known(self) -> bool:
        return self.schema is not None

    def child(self, key: str) -> Node:
        s = self.s
        props = s.get("properties")
        if props is not None and key in props:
            sub = props[key]
            if self.crd and key == "metadata" and self.is_root:
                return Node.builtin(OBJECT_META)
            return Node(sub, self.crd)
        ap = s.get("additionalProperties")
        if isinstance(ap, dict):
            return Node(ap, self.crd)
        return Node(None, self.crd)

    @property
    def is_root(self) -> bool:
        return bool(self.s.get("x-box-root"))

    def item(self) -> Node:
        return Node(self.s.get("items"), self.crd) if "items" in self.s else Node(None, self.crd)

    @property
    def preserves_unknown(self) -> bool:
        s = self.s
        if not self.known or s.get("x-kubernetes-preserve-unknown-fields") or s.get("x-kubernetes-embedded-resource"):
            return True
        if self.crd:
            return False
        # Built-in types: an object without declared properties (RawExtension, JSON) holds anything.
        return "properties" not in s and not isinstance(s.get("additionalProperties"), dict)

    def list_type(self) -> str:
        """'map', 'set' or 'atomic' (the server-side apply view of a list)."""
        s = self.s
        lt = s.get("x-kubernetes-list-type")
        if lt:
            return lt
        if s.get("x-kubernetes-patch-merge-key"):
            return "map"
        return "atomic"

    def map_keys(self) -> list[str]:
        s = self.s
        return list(s.get("x-kubernetes-list-map-keys") or ([s["x-kubernetes-patch-merge-key"]]
                                                              if s.get("x-kubernetes-patch-merge-key") else []))

    def patch_merge_key(self) -> str | None:
        """Strategic merge patch: the merge key of a list, None when the list is replaced."""
        s = self.s
        if "merge" in str(s.get("x-kubernetes-patch-strategy", "")):
            return s.get("x-kubernetes-patch-merge-key") or ""
        return None

    def map_atomic(self) -> bool:
        return self.s.get("x-kubernetes-map-type") == "atomic"


def crd_root(schema: dict[str, Any]) -> Node:
    return Node({**schema, "x-box-root": True}, crd=True)


# ---- defaulting and pruning (CRDs) -------------------------------------------------------------

def apply_defaults(node: Node, value: Any) -> Any:
    if not node.known:
        return value
    s = node.s
    if isinstance(value, dict):
        for key, sub in (s.get("properties") or {}).items():
            if key not in value and isinstance(sub, dict) and "default" in sub:
                value[key] = json.loads(json.dumps(sub["default"]))
        for key in list(value):
            value[key] = apply_defaults(node.child(key), value[key]) if not (node.is_root and key == "metadata") else value[key]
    elif isinstance(value, list) and "items" in s:
        return [apply_defaults(node.item(), v) for v in value]
    return value


def prune(node: Node, value: Any, path: str = "") -> list[str]:
    """Drops fields the schema does not declare, in place; returns the dropped paths."""
    dropped: list[str] = []
    if not node.known or not isinstance(value, (dict, list)):
        return dropped
    s = node.s
    if isinstance(value, dict):
        if node.is_root:
            keep = {"apiVersion", "kind", "metadata"}
        else:
            keep = set()
        props = s.get("properties")
        ap = s.get("additionalProperties")
        if not node.preserves_unknown and not isinstance(ap, dict) and ap is not True:
            for key in list(value):
                if key not in keep and key not in (props or {}):
                    del value[key]
                    dropped.append(f"{path}.{key}" if path else key)
        for key in list(value):
            if node.is_root and key in ("apiVersion", "kind"):
                continue
            dropped += prune(node.child(key), value[key], f"{path}.{key}" if path else key)
    else:
        for i, v in enumerate(value):
            dropped += prune(node.item(), v, f"{path}[{i}]")
    return dropped


# ---- validation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueTypeInvalid...
    message: str


_cel_env = celpy.Environment()


@functools.cache
def _cel_program(rule: str) -> Any:
    return _cel_env.program(_cel_env.compile(rule))


def _type_ok(value: Any, types: set[str], s: dict[str, Any]) -> bool:
    if s.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    return any(checks[t](value) for t in types if t in checks)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def validate(node: Node, value: Any, old: Any = None, path: str = "", has_old: bool = False) -> list[FieldError]:
    """Structural checks, then the CEL rules of each node whose value passed them. `old` is the
    value at the same path in the stored object (transition rules run only where it exists)."""
    if not node.known:
        return []
    s = node.s
    errors: list[FieldError] = []
    field = path or "<root>"
    if value is None:
        if s.get("nullable") or not node.crd:
            return []
        return [FieldError(field, "FieldValueTypeInvalid", f"Invalid value: \"null\": {field} in body must be of type {s.get('type', 'object')}")]
    types = _types(s)
    if (types or s.get("x-kubernetes-int-or-string")) and not _type_ok(value, types, s):
        want = "/".join(sorted(types)) or "integer/string"
        return [FieldError(field, "FieldValueTypeInvalid",
                           f"Invalid value: {_describe(value)}: {field} in body must be of type {want}: {_describe(value)}")]
    if "enum" in s and value not in s["enum"]:
        allowed = ", ".join(json.dumps(x) for x in s["enum"])
        errors.append(FieldError(field, "FieldValueNotSupported", f"Unsupported value: {json.dumps(value)}: supported values: {allowed}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in s and (value < s["minimum"] or (s.get("exclusiveMinimum") is True and value == s["minimum"])):
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {value}: {field} in body should be greater than or equal to {s['minimum']}"))
        if "maximum" in s and (value > s["maximum"] or (s.get("exclusiveMaximum") is True and value == s["maximum"])):
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {value}: {field} in body should be less than or equal to {s['maximum']}"))
    if isinstance(value, str) and node.crd:
        if "maxLength" in s and len(value) > s["maxLength"]:
            errors.append(FieldError(field, "FieldValueTooLong", f"Too long: may not be longer than {s['maxLength']}"))
        if "minLength" in s and len(value) < s["minLength"]:
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {field} in body should be at least {s['minLength']} chars long"))
        if "pattern" in s and not re.search(s["pattern"], value):
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {field} in body should match '{s['pattern']}'"))
    if isinstance(value, list):
        if "maxItems" in s and len(value) > s["maxItems"]:
            errors.append(FieldError(field, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {s['maxItems']} items"))
        if "minItems" in s and len(value) < s["minItems"]:
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {len(value)}: {field} in body should have at least {s['minItems']} items"))
        if node.crd and node.list_type() == "map":
            seen = set()
            for i, item in enumerate(value):
                key = json.dumps({k: item.get(k) for k in node.map_keys()} if isinstance(item, dict) else item, sort_keys=True)
                if key in seen:
                    errors.append(FieldError(f"{path}[{i}]", "FieldValueDuplicate", f"Duplicate value: {key}"))
                seen.add(key)
        old_items = _old_items(node, old) if has_old else {}
        for i, item in enumerate(value):
            ok = _item_key(node, item)
            errors += validate(node.item(), item, old_items.get(ok), f"{path}[{i}]", ok in old_items)
    if isinstance(value, dict):
        for name in s.get("required", ()):
            if name not in value:
                errors.append(FieldError(f"{path}.{name}" if path else name, "FieldValueRequired", "Required value"))
        for key, sub in value.items():
            if node.is_root and key in ("apiVersion", "kind", "metadata"):
                continue
            child_old = old.get(key) if has_old and isinstance(old, dict) else None
            child_has_old = has_old and isinstance(old, dict) and key in old
            errors += validate(node.child(key), sub, child_old, f"{path}.{key}" if path else key, child_has_old)
    if errors or not node.crd:
        return errors  # CEL runs only on values that passed the structural checks
    for rule in s.get("x-kubernetes-validations", ()):
        transition = "oldSelf" in rule["rule"]
        if transition and not has_old:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate(activation))
        except Exception as exc:  # noqa: BLE001 - a rule that cannot evaluate refuses the write, as in the server
            errors.append(FieldError(field, "FieldValueInvalid", f"Invalid value: {_describe(value)}: rule evaluation error: {exc}"))
            continue
        if not ok:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            errors.append(FieldError(rule.get("fieldPath") and f"{path}{rule['fieldPath']}" or field,
                                     rule.get("reason", "FieldValueInvalid"), f"Invalid value: {_describe(value)}: {message}"))
    return errors


def _item_key(node: Node, item: Any) -> str:
    if node.list_type() == "map" and isinstance(item, dict):
        return json.dumps({k: item.get(k) for k in node.map_keys()}, sort_keys=True)
    if node.list_type() == "set":
        return json.dumps(item, sort_keys=True)
    return "\x00unkeyed"  # atomic lists: items do not correlate with the old object


def _old_items(node: Node, old: Any) -> dict[str, Any]:
    if not isinstance(old, list) or node.list_type() not in ("map", "set"):
        return {}
    return {_item_key(node, item): item for item in old}


def structural_errors(schema: Any, path: str = "spec.validation.openAPIV3Schema") -> list[FieldError]:
    """The apiextensions/v1 rules a CRD schema must keep to be structural (refused otherwise)."""
    if not isinstance(schema, dict):
        return [FieldError(path, "FieldValueInvalid", "Invalid value: must be an object")]
    errors: list[FieldError] = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") and not schema.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(FieldError(f"{path}.type", "FieldValueRequired", "Required value: must not be empty for specified object fields"))
    for banned in ("$ref", "definitions", "additionalItems", "patternProperties", "dependencies"):
        if banned in schema:
            errors.append(FieldError(f"{path}.{banned}", "FieldValueForbidden", f"Forbidden: {banned} is not supported"))
    if "properties" in schema and "additionalProperties" in schema:
        errors.append(FieldError(f"{path}.additionalProperties", "FieldValueForbidden",
                                 "Forbidden: additionalProperties and properties are mutual exclusive"))
    for name, sub in (schema.get("properties") or {}).items():
        errors += structural_errors(sub, f"{path}.properties[{name}]")
    if isinstance(schema.get("items"), dict):
        errors += structural_errors(schema["items"], f"{path}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        errors += structural_errors(schema["additionalProperties"], f"{path}.additionalProperties")
    for rule in schema.get("x-kubernetes-validations") or ():
        try:
            _cel_env.compile(rule.get("rule", ""))
        except Exception as exc:  # noqa: BLE001 - a rule that does not compile refuses the CRD, as in the server
            errors.append(FieldError(f"{path}.x-kubernetes-validations", "FieldValueInvalid",
                                     f"Invalid value: {json.dumps(rule.get('rule'))}: compilation failed: {exc}"))
    return errors
