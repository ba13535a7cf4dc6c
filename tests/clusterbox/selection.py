"""Label and field selectors, parsed as the API server parses them (`a=b,c!=d,e in (x,y),!f`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class SelectorError(ValueError):
    pass


_TERM = re.compile(r"^\s*(!)?\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t for t in terms if t.strip()]


def label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split(selector or ""):
        m = _TERM.match(term)
        if not m:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        if neg:
            checks.append(lambda labels, k=key: k not in labels)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif setop:
            vs = {x.strip() for x in values.split(",") if x.strip()}
            if setop == "in":
                checks.append(lambda labels, k=key, vs=vs: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=vs: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(c(labels or {}) for c in checks)


def selector_string(selector: dict[str, Any] | None) -> str:
    """A LabelSelector object in its string form (what the scale subresource reports)."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or ():
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _dotted(obj: Any, path: str) -> str:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return str(cur).lower()
    return str(cur)


def field_selector(selector: str, supported: tuple[str, ...]) -> Callable[[dict[str, Any]], bool]:
    allowed = {"metadata.name", "metadata.namespace", *supported}
    checks = []
    for term in _split(selector or ""):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise SelectorError(f"invalid selector: '{term.strip()}'; can't understand '{term.strip()}'")
        key, op, value = m.groups()
        if key not in allowed:
            raise SelectorError(f'field label not supported: {key}')
        if op == "!=":
            checks.append(lambda o, k=key, v=value: _dotted(o, k) != v)
        else:
            checks.append(lambda o, k=key, v=value: _dotted(o, k) == v)
    return lambda obj: all(c(obj) for c in checks)
