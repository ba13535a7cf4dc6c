"""What the API server does with a custom resource against its CRD, for tests: the OpenAPI schema
(types, enums, bounds, patterns, required fields, unknown fields rejected as with strict field
validation) and the CEL rules, transition rules included when an old object is given."""

from __future__ import annotations

import re
from typing import Any

import celpy

_TYPES = {"object": dict, "string": str, "boolean": bool, "array": list}
_env = celpy.Environment()
_programs: dict[str, Any] = {}


def _cel(rule: str, self_value: Any, old_value: Any) -> bool:
    program = _programs.get(rule)
    if program is None:
        program = _programs[rule] = _env.program(_env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return bool(program.evaluate(activation))


def check(schema: dict[str, Any], value: Any, path: str = "", old: Any = None) -> list[str]:
    errors: list[str] = []
    kind = schema.get("type")
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: must be an integer"]
    elif kind in _TYPES and not isinstance(value, _TYPES[kind]):
        return [f"{path}: must be of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
        errors.append(f"{path}: must be >= {schema['minimum']}")
    if "maximum" in schema and isinstance(value, int) and value > schema["maximum"]:
        errors.append(f"{path}: must be <= {schema['maximum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties")
        # Defaulting happens before validation, as in the API server.
        value = {**{n: sub["default"] for n, sub in (props or {}).items() if "default" in sub}, **value}
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for name in value:
                if name not in props:
                    errors.append(f"{path}.{name}: unknown field")
        for name, sub in (props or {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                errors += check(sub, value[name], f"{path}.{name}", sub_old)
    if errors:
        return errors  # the API server evaluates CEL only on schema-valid values
    for r in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in r["rule"]
        if transition and old is None:
            continue
        try:
            ok = _cel(r["rule"], value, old if transition else None)
        except Exception as exc:  # a rule that cannot evaluate is a rule that fails
            ok = False
            r = {**r, "message": f"{r['message']} (evaluation error: {exc})"}
        if not ok:
            errors.append(f"{path or '<root>'}: {r['message']}")
    return errors


def validate(crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return check(schema, obj, "", old)


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """The structural-schema rules of apiextensions/v1 that a generated schema could break."""
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") and \
            not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    for banned in ("anyOf", "oneOf", "allOf", "not", "$ref", "definitions", "additionalItems"):
        if banned in schema:
            problems.append(f"{path}: {banned} at a node (only allowed under value validations)")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties together")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems
