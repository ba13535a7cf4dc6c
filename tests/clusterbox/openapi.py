"""OpenAPI v3 documents per group-version, made from the real Kubernetes schemas that
kubernetes-validate ships (built-in kinds) and from the CRDs' openAPIV3Schema (custom kinds):
what kubectl reads for field validation support, strategic-merge metadata and `explain`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .schema import OBJECT_META, builtin_def_for, builtin_defs

if TYPE_CHECKING:
    from .server import ApiServer

_REF = "#/$defs/"
_cache: dict[str, dict[str, Any]] = {}


def _convert(node: Any) -> Any:
    """JSON-schema draft (nullable type lists, $defs refs) to OpenAPI 3.0."""
    if isinstance(node, list):
        return [_convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = "#/components/schemas/" + v[len(_REF):]
        elif k == "type" and isinstance(v, list):
            ts = [t for t in v if t != "null"]
            out[k] = ts[0] if len(ts) == 1 else ts[0]
        else:
            out[k] = _convert(v)
    return out


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            name = ref[len(_REF):]
            if name not in out:
                out.add(name)
                _refs(builtin_defs()[name], out)
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)


def _operations(gvk: dict[str, str], item: bool) -> dict[str, Any]:
    params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
              {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
              {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
    ops: dict[str, Any] = {}
    verbs = ("get", "put", "patch", "delete") if item else ("get", "post")
    for verb in verbs:
        op: dict[str, Any] = {"x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}},
                              "x-kubernetes-action": {"get": "get", "put": "put", "patch": "patch", "delete": "delete",
                                                      "post": "post"}[verb]}
        if verb in ("put", "patch", "post"):
            op["parameters"] = params + ([{"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}}]
                                         if verb == "patch" else [])
        ops[verb] = op
    return ops


def document(server: ApiServer, group: str, version: str) -> dict[str, Any]:
    resources = sorted((r for (g, v, _), r in server.resources.items() if (g, v) == (group, version)), key=lambda r: r.plural)
    key = json.dumps([(r.plural, r.crd_schema) for r in resources], sort_keys=True, default=str)
    if key in _cache:
        return _cache[key]
    schemas: dict[str, Any] = {}
    needed: set[str] = set()
    paths: dict[str, Any] = {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    for r in resources:
        gvk = {"group": group, "version": version, "kind": r.kind}
        if r.crd_schema is not None:
            rev = ".".join(reversed(group.split(".")))
            name = f"{rev}.{version}.{r.kind}"
            schema = json.loads(json.dumps(r.crd_schema))
            schema.setdefault("properties", {})["metadata"] = {"$ref": _REF + OBJECT_META}
            schema["x-kubernetes-group-version-kind"] = [gvk]
            _refs(schema, needed)
            schemas[name] = schema
        else:
            def_name = builtin_def_for(group, version, r.kind)
            if def_name:
                needed.add(def_name)
                _refs(builtin_defs()[def_name], needed)
        base = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
        paths[base] = _operations(gvk, False)
        paths[base + "/{name}"] = _operations(gvk, True)
        for sub in (["status"] if r.status else []) + (["scale"] if r.scale else []):
            paths[base + "/{name}/" + sub] = _operations(gvk if sub == "status" else {"group": "autoscaling", "version": "v1", "kind": "Scale"}, True)
    if any(r.scale for r in resources):
        needed.add("io.k8s.api.autoscaling.v1.Scale")
        _refs(builtin_defs()["io.k8s.api.autoscaling.v1.Scale"], needed)
    for name in needed:
        schemas[name] = builtin_defs()[name]
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes (clusterbox)", "version": "unversioned"},
           "paths": paths, "components": {"schemas": _convert(schemas)}}
    _cache[key] = doc
    return doc
